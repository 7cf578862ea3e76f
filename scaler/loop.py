"""The scaler's loop: observe (EC2 tags, queue depth, request history) -> decide (the pure
policy) -> act (the fleet driver) -> record, every tick.

The fleet is reconciled from EC2 on every tick; the policy's memory only carries its timers. No
error in a tick stops the loop: a part that cannot be read is passed to the policy as unknown,
logged, and recorded once as a ScalingEvent until it changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, Max, Q

from scaler.models import ERROR_ACTION, FleetInstance, ScalingEvent
from scaler.policy import (
    Action,
    ActionResult,
    Decision,
    Instance,
    Kind,
    Observation,
    Outcome,
    PolicyConfig,
    PolicyMemory,
    State,
    decide,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# FleetInstance.last_observed_at is refreshed at least this often even when nothing changes, so
# the admin shows whether the scaler is alive without a write on every tick.
OBSERVED_REFRESH_SECONDS = 60.0


class FleetDriver(Protocol):
    def describe(self) -> tuple[Instance, ...]: ...

    def queue_depth(self) -> tuple[int, int]: ...

    def apply(self, actions: Sequence[Action]) -> tuple[Outcome, ...]: ...


def policy_config() -> PolicyConfig:
    return PolicyConfig(
        max_instances=settings.FACESITE_MAX_INSTANCES,
        requests_per_instance=settings.FACESITE_REQUESTS_PER_INSTANCE,
        warm_pool=settings.FACESITE_WARM_POOL,
        settle_seconds=settings.FACESITE_SETTLE_SECONDS,
        stuck_after=settings.FACESITE_STUCK_AFTER,
        count_lag=settings.FACESITE_COUNT_LAG_ALLOWANCE,
    )


def as_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def last_work_at(instance_ids: Iterable[str], since: float) -> dict[str, float]:
    """Instance id -> the latest start or finish of a request on it after `since`.

    One aggregate query over the recent history; older work needs no answer, since the policy
    treats "none since `since`" and "long ago" alike.
    """
    from recognition.models import UploadRequest

    ids = list(instance_ids)
    if not ids:
        return {}
    cutoff = as_datetime(since)
    rows = (
        UploadRequest.objects.filter(worker_instance_id__in=ids)
        .filter(Q(started_at__gte=cutoff) | Q(finished_at__gte=cutoff))
        .order_by()
        .values("worker_instance_id")
        .annotate(started=Max("started_at"), finished=Max("finished_at"))
    )
    return {
        row["worker_instance_id"]: max(
            t for t in (row["started"], row["finished"]) if t
        ).timestamp()
        for row in rows
    }


def outstanding_requests(since: float) -> int | None:
    """Requests received after `since` that are not final yet: the work the web tier knows is
    waiting or in hand, exactly (SQS's counts are approximate). None when no request at all was
    received since then: the history then knows nothing of what is queued (messages sent by
    something other than the web tier), and SQS's counts alone decide. Older requests have had
    their 504; if their messages still wait, SQS's counts carry them (see scaler/policy.py)."""
    from recognition.models import UploadRequest

    recent = UploadRequest.objects.filter(received_at__gte=as_datetime(since))
    counts = recent.aggregate(
        received=Count("pk"),
        outstanding=Count("pk", filter=~Q(status__in=UploadRequest.FINAL_STATUSES)),
    )
    return counts["outstanding"] if counts["received"] else None


class ScalerLoop:
    def __init__(
        self,
        fleet: FleetDriver,
        config: PolicyConfig,
        tick_seconds: float,
        clock: Callable[[], float] = time.time,
        stopping: threading.Event | None = None,
        observer: Callable[[Observation], object] | None = None,
    ) -> None:
        self.fleet = fleet
        self.config = config
        self.tick_seconds = tick_seconds
        # Wall-clock seconds: EC2 launch times and the request history are wall-clock too.
        self.clock = clock
        self.memory = PolicyMemory()
        self.outcomes: tuple[Outcome, ...] = ()
        self.stopping = stopping or threading.Event()
        # Told every tick's observation (scaler.observations records it for /metrics).
        self.observer = observer
        self._errors: dict[str, str] = {}  # what failed -> its last error, to record it once
        self._rows: dict[str, FleetInstance] | None = None  # FleetInstance rows as written

    def request_stop(self) -> None:
        """Finish the current tick, then return from run(). Safe from a signal handler."""
        self.stopping.set()

    def run(self, once: bool = False) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                logger.exception("scaler tick failed; carrying on with the next one")
            finally:
                close_old_connections()
            if once:
                return
            self.stopping.wait(max(0.0, self.tick_seconds - (time.monotonic() - started)))

    def tick(self) -> Decision:
        now = self.clock()
        instances = self._attempt("describe instances", self.fleet.describe, now)
        depth = self._attempt("read the queue depth", self.fleet.queue_depth, now)
        running = [i.id for i in instances or () if i.state == State.RUNNING]
        since = now - self.config.stuck_after
        work = self._attempt("read the request history", lambda: last_work_at(running, since), now)
        outstanding = self._attempt(
            "read the outstanding requests",
            lambda: outstanding_requests(now - settings.FACESITE_REPLY_TIMEOUT),
            now,
        )
        visible, in_flight = depth if depth is not None else (None, None)
        observation = Observation(
            now, visible, in_flight, instances, work, self.outcomes, outstanding=outstanding
        )
        if self.observer is not None:
            self._attempt("record the observation", lambda: self.observer(observation), now)

        decision = decide(observation, self.config, self.memory)
        self.memory = decision.memory
        try:
            self.outcomes = self.fleet.apply(decision.actions)
        except Exception as error:
            # The driver reports API errors as outcomes; this is anything else. Whether the
            # actions happened is unknown, which makes the policy re-issue its launches under
            # the same tokens instead of holding their numbers until they time out.
            logger.exception("applying %d actions failed", len(decision.actions))
            detail = f"{type(error).__name__}: {error}"
            self.outcomes = tuple(
                Outcome(a, ActionResult.UNKNOWN, detail) for a in decision.actions
            )
        if self.outcomes:
            self._log(self.outcomes)
            outcomes = self.outcomes
            self._attempt("record scaling events", lambda: self._record(observation, outcomes), now)
        if instances is not None:
            self._attempt("record the fleet", lambda: self._reconcile(instances, now), now)
        return decision

    def _attempt(self, what: str, call: Callable[[], T], now: float) -> T | None:
        """Run one part of a tick; on failure log and record it (once while it keeps failing)."""
        try:
            result = call()
        except Exception as error:
            text = f"{type(error).__name__}: {error}"
            if self._errors.get(what) != text:
                self._errors[what] = text
                logger.warning("could not %s: %s", what, text)
                self._record_error(what, text, now)
            return None
        if self._errors.pop(what, None) is not None:
            logger.info("can %s again", what)
        return result

    def _record_error(self, what: str, text: str, now: float) -> None:
        try:
            ScalingEvent.objects.create(
                at=as_datetime(now),
                action=ERROR_ACTION,
                result=ActionResult.FAILED,
                reason=f"could not {what}",
                detail=text,
            )
        except Exception:
            logger.exception("could not record the error either")

    def _log(self, outcomes: Sequence[Outcome]) -> None:
        for (kind, reason, result, detail), group in _grouped(outcomes):
            names = " ".join(o.action.name for o in group)
            if result == ActionResult.OK:
                logger.info("%s %s: %s", kind, names, reason)
            else:
                logger.warning("%s %s %s (%s): %s", kind, names, result, detail, reason)

    def _record(self, observation: Observation, outcomes: Sequence[Outcome]) -> None:
        counts = _state_counts(observation.instances)
        at = as_datetime(observation.now)
        ScalingEvent.objects.bulk_create(
            ScalingEvent(
                at=at,
                action=kind,
                result=result,
                instance_ids=" ".join(filter(None, map(_instance_id, group))),
                instance_names=" ".join(o.action.name for o in group),
                reason=reason,
                detail=detail,
                visible=observation.visible,
                in_flight=observation.in_flight,
                **counts,
            )
            for (kind, reason, result, detail), group in _grouped(outcomes)
        )

    def _reconcile(self, instances: Sequence[Instance], now: float) -> None:
        """Bring FleetInstance in line with what EC2 showed, writing only what changed."""
        if self._rows is None:
            self._rows = {row.instance_id: row for row in FleetInstance.objects.all()}
        at = as_datetime(now)
        rows: dict[str, FleetInstance] = {}
        created, changed = [], []
        for instance in instances:
            row = self._rows.get(instance.id)
            if row is None:
                row = FleetInstance(
                    instance_id=instance.id,
                    name=instance.name,
                    number=instance.number,
                    state=instance.state,
                    launched_at=as_datetime(instance.launched_at) if instance.launched_at else None,
                    state_since=at,
                    last_observed_at=at,
                )
                created.append(row)
            elif row.state != instance.state or row.name != instance.name:
                if row.state != instance.state:
                    row.state, row.state_since = instance.state, at
                row.name, row.number, row.last_observed_at = instance.name, instance.number, at
                changed.append(row)
            elif (at - row.last_observed_at).total_seconds() >= OBSERVED_REFRESH_SECONDS:
                row.last_observed_at = at
                changed.append(row)
            rows[instance.id] = row
        gone = [instance_id for instance_id in self._rows if instance_id not in rows]
        if not (created or changed or gone):
            return
        try:
            with transaction.atomic():
                FleetInstance.objects.bulk_create(created)
                FleetInstance.objects.bulk_update(
                    changed, ["name", "number", "state", "state_since", "last_observed_at"]
                )
                if gone:
                    FleetInstance.objects.filter(instance_id__in=gone).delete()
        except Exception:
            self._rows = None  # rows in memory may now differ from the table: reload next time
            raise
        self._rows = rows


def _grouped(outcomes: Sequence[Outcome]) -> list[tuple[tuple[Any, ...], list[Outcome]]]:
    """One group per (kind, reason, result, error), in the order they first appear."""
    groups: dict[tuple[Any, ...], list[Outcome]] = {}
    for outcome in outcomes:
        detail = "" if outcome.result == ActionResult.OK else outcome.detail
        key = (outcome.action.kind, outcome.action.reason, outcome.result, detail)
        groups.setdefault(key, []).append(outcome)
    return list(groups.items())


def _instance_id(outcome: Outcome) -> str:
    if outcome.action.kind == Kind.LAUNCH:
        # A launch's id is only known from its answer.
        return outcome.detail if outcome.result == ActionResult.OK else ""
    return outcome.action.instance_id or ""


def _state_counts(instances: Sequence[Instance] | None) -> dict[str, int | None]:
    if instances is None:
        return {"running": None, "pending": None, "stopped": None}
    states = [i.state for i in instances]
    return {
        "running": states.count(State.RUNNING),
        "pending": states.count(State.PENDING),
        "stopped": states.count(State.STOPPED),
    }
