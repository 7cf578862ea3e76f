"""A worker stops its own EC2 instance when it is idle and the request queue is empty.

Whether the worker is busy is kept by Celery's task_prerun/task_postrun signals, so the task
itself does no bookkeeping.

On AWS the instance id comes from the instance metadata service; the local instance runner
passes it in FACESITE_INSTANCE_ID. A worker started by hand has none and never self-stops.
A failed metadata lookup is not remembered: the id is looked up again later.

Failed checks (EC2 or SQS refusing, the id still unknown) are retried with capped exponential
backoff and jitter, not at the check interval: a permissions mistake must not become a hot loop
against EC2 from every worker.
"""

import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable

from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutting_down
from django.conf import settings

from facesite import aws
from facesite.aws import readers
from facesite.aws.instance import stop_own_instance
from recognition.worker.backoff import backoff_seconds

logger = logging.getLogger(__name__)

# After stopping our own instance, how long to wait before checking again.
STOP_RECHECK_SECONDS = 5.0
# The longest an idle worker waits between checks of a queue that still holds work; the scaler
# stops idle instances after its settle time anyway.
BUSY_QUEUE_RECHECK_MAX_SECONDS = 2.0
# Failed checks wait the check interval doubled per failure in a row, at most this long.
FAILED_CHECK_MAX_PAUSE_SECONDS = 60.0
# After a failed metadata lookup, how long the id is taken as unknown before asking again (tasks
# stamp each result with the id, and a lookup can take seconds to time out).
METADATA_RETRY_SECONDS = 30.0

_busy = threading.Event()
_stopping = threading.Event()
_idle_since = time.monotonic()


@task_prerun.connect
def mark_busy(**_: object) -> None:
    _busy.set()


@task_postrun.connect
def mark_idle(**_: object) -> None:
    global _idle_since
    _idle_since = time.monotonic()
    _busy.clear()


def idle_for() -> float:
    """Seconds since the last task ended (or the worker became ready); 0 while a task runs."""
    return 0.0 if _busy.is_set() else time.monotonic() - _idle_since


class InstanceIdentity:
    """This worker's EC2 instance id, or "" while unknown.

    A configured id (or its absence on the emulator) and a successful metadata lookup are kept
    for the life of the process; a failed lookup is retried once `retry_after` seconds have
    passed.
    """

    def __init__(
        self,
        lookup: Callable[[], str | None],
        retry_after: float = METADATA_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._known: str | None = None
        self._failed_at: float | None = None

    def __call__(self) -> str:
        with self._lock:
            if self._known is not None:
                return self._known
            if self._failed_at is not None and self._clock() - self._failed_at < self._retry_after:
                return ""
            found = self._lookup()
            if found is None:
                self._failed_at = self._clock()
                return ""
            self._known, self._failed_at = found, None
            return found

    @property
    def pending(self) -> bool:
        """True while the id is unknown because a lookup failed (it will be asked again)."""
        return self._known is None and self._failed_at is not None

    def forget(self) -> None:
        """Look the id up afresh on the next call (the runner sets FACESITE_INSTANCE_ID)."""
        with self._lock:
            self._known, self._failed_at = None, None


def _configured_or_metadata_instance_id() -> str | None:
    """The configured id; on AWS without one, the metadata service's (None when it fails)."""
    configured = os.environ.get("FACESITE_INSTANCE_ID", "")
    if configured or settings.AWS_ENDPOINT_URL:
        return configured
    return _instance_id_from_metadata()


instance_id = InstanceIdentity(_configured_or_metadata_instance_id)


def _instance_id_from_metadata() -> str | None:
    # IMDSv2: a session token first, then the id. Only reached on real AWS.
    base = "http://169.254.169.254/latest"
    try:
        token_request = urllib.request.Request(
            f"{base}/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"},
        )
        token = urllib.request.urlopen(token_request, timeout=2).read().decode()
        id_request = urllib.request.Request(
            f"{base}/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
        )
        return urllib.request.urlopen(id_request, timeout=2).read().decode()
    except OSError as error:
        logger.warning(
            "instance metadata lookup failed (%s); asking again in %.0f s",
            error,
            METADATA_RETRY_SECONDS,
        )
        return None


def queue_is_empty() -> bool:
    """Nothing visible and nothing in flight on the request queue."""
    return readers.queue_depth(aws.client("sqs"), aws.names().request_queue_url).total == 0


def self_stop_loop(instance: Callable[[], str], interval: float, idle_after: float) -> None:
    """Stop our own instance (`instance()`, "" while unknown) once we hold no task and the
    queue is empty.

    Checked once idle for `idle_after` seconds (so a worker of a busy queue doesn't add to the
    queue's load): a task's message stays in flight until it is acknowledged, so an instance is
    never stopped while any worker holds work. A message that arrives during the
    stop is finished by Celery's warm shutdown (SIGTERM) before the process exits.
    """
    pause = interval
    failures = 0
    while not _stopping.wait(pause):
        if idle_for() < idle_after:
            pause = interval
            continue
        try:
            if not queue_is_empty():
                # Work waits that this worker has not got yet, so others hold it or the queue
                # is slow to hand it out: check less and less often rather than add to the load.
                failures = 0
                pause = min(pause * 2, BUSY_QUEUE_RECHECK_MAX_SECONDS)
                continue
            if idle_for() < idle_after:
                pause = interval  # a task began while the queue was read: it is not idle
                continue
            stopping = instance()
            if not stopping:
                raise LookupError("this worker's instance id is not known yet")
            stop_own_instance(stopping)
        except Exception as error:
            failures += 1
            pause = backoff_seconds(failures, interval, FAILED_CHECK_MAX_PAUSE_SECONDS)
            logger.warning(
                "self-stop check failed (%d in a row), retrying in %.1f s: %s",
                failures,
                pause,
                error,
            )
            continue
        failures = 0
        logger.info("queue empty and idle: stopping instance %s", stopping)
        # Shutdown normally follows within moments; if the instance was started again before
        # it stopped, this worker lives on and must keep checking.
        pause = STOP_RECHECK_SECONDS


@worker_ready.connect
def start_self_stop(**_: object) -> None:
    if not instance_id() and not instance_id.pending:
        return  # not on an app-tier instance: a worker started by hand
    # Idle from now, not from the import: the local runner imports this module once and forks
    # workers from it much later, and a worker that booted slowly has not been idle either.
    # Counted from the import, a worker forked into a burst whose messages SQS's lagging counts
    # did not show yet stopped its instance before its first task, and the scaler had to start
    # it again.
    mark_idle()
    thread = threading.Thread(
        target=self_stop_loop,
        args=(instance_id, settings.FACESITE_SELF_STOP_INTERVAL, settings.FACESITE_SELF_STOP_IDLE),
        name="self-stop",
        daemon=True,
    )
    thread.start()


@worker_shutting_down.connect
def stop_self_stop(**_: object) -> None:
    _stopping.set()
