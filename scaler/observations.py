"""The scaler's record of what it sees, for /metrics and the dashboard: every
FACESITE_OBSERVATION_INTERVAL, one FleetObservation row with the app tier's instances by state
and the three queues' depths. The request queue's depth and the instances come from the tick's
own observation; the response queue and the dead-letter queue are read here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from facesite.aws import readers
from facesite.aws.names import State
from scaler.models import FleetObservation
from scaler.policy import Observation

logger = logging.getLogger(__name__)

# Old rows are pruned once in this many writes, not on every one.
PRUNE_EVERY = 100


class ObservationRecorder:
    """Called by the scaler loop with each tick's observation; writes one row per interval."""

    def __init__(
        self,
        sqs: Any,
        response_queue_url: str,
        dead_letter_queue_url: str,
        interval: float,
        keep_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sqs = sqs
        self.response_queue_url = response_queue_url
        self.dead_letter_queue_url = dead_letter_queue_url
        self.interval = interval
        self.keep = timedelta(seconds=keep_seconds)
        self.clock = clock
        self._last: float | None = None
        self._writes = 0

    def __call__(self, observation: Observation) -> FleetObservation | None:
        moment = self.clock()
        if self._last is not None and moment - self._last < self.interval:
            return None
        self._last = moment
        row = FleetObservation(at=datetime.fromtimestamp(observation.now, tz=UTC))
        if observation.instances is not None:
            states = [instance.state for instance in observation.instances]
            row.pending = states.count(State.PENDING)
            row.running = states.count(State.RUNNING)
            row.stopping = states.count(State.STOPPING)
            row.stopped = states.count(State.STOPPED)
            row.shutting_down = states.count(State.SHUTTING_DOWN)
        row.request_visible, row.request_in_flight = observation.visible, observation.in_flight
        row.response_visible, row.response_in_flight = self._depth(self.response_queue_url)
        row.dead_letter_visible, row.dead_letter_in_flight = self._depth(self.dead_letter_queue_url)
        row.save()
        self._writes += 1
        if self._writes % PRUNE_EVERY == 1:
            FleetObservation.objects.filter(at__lt=row.at - self.keep).delete()
        return row

    def _depth(self, queue_url: str) -> tuple[int | None, int | None]:
        try:
            depth = readers.queue_depth(self.sqs, queue_url)
        except Exception as error:  # recorded as unknown (null); the next interval tries again
            logger.warning(
                "could not read the depth of %s: %s", queue_url.rsplit("/", 1)[-1], error
            )
            return None, None
        return depth.visible, depth.in_flight
