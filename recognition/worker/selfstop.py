"""A worker stops its own EC2 instance when it is idle and the request queue is empty.

Whether the worker is busy is kept by Celery's task_prerun/task_postrun signals, so the task
itself does no bookkeeping.

On AWS the instance id comes from the instance metadata service; the local instance runner
passes it in FACESITE_INSTANCE_ID. A worker started by hand has none and never self-stops.
"""

import functools
import logging
import os
import threading
import time
import urllib.request

from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutting_down
from django.conf import settings

from facesite import aws
from facesite.aws import readers
from facesite.aws.instance import stop_own_instance

logger = logging.getLogger(__name__)

# After stopping our own instance, how long to wait before checking again.
STOP_RECHECK_SECONDS = 5.0
# The longest an idle worker waits between checks of a queue that still holds work; the scaler
# stops idle instances after its settle time anyway.
BUSY_QUEUE_RECHECK_MAX_SECONDS = 2.0

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
    """Seconds since the last task ended (or the process started); 0 while a task runs."""
    return 0.0 if _busy.is_set() else time.monotonic() - _idle_since


@functools.cache
def instance_id() -> str:
    """This worker's EC2 instance id, or "" when it runs outside an app-tier instance."""
    configured = os.environ.get("FACESITE_INSTANCE_ID", "")
    if configured or settings.AWS_ENDPOINT_URL:
        return configured
    return _instance_id_from_metadata()


def _instance_id_from_metadata() -> str:
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
    except OSError:
        logger.warning("no instance metadata service: this worker will not stop its instance")
        return ""


def queue_is_empty() -> bool:
    """Nothing visible and nothing in flight on the request queue."""
    return readers.queue_depth(aws.client("sqs"), aws.names().request_queue_url).total == 0


def self_stop_loop(instance: str, interval: float, idle_after: float) -> None:
    """Stop our own instance once we hold no task and the queue is empty.

    Checked once idle for `idle_after` seconds (so a worker of a busy queue doesn't add to the
    queue's load): a task's message stays in flight until it is acknowledged, so an instance is
    never stopped while any worker holds work. A message that arrives during the
    stop is finished by Celery's warm shutdown (SIGTERM) before the process exits.
    """
    pause = interval
    while not _stopping.wait(pause):
        if idle_for() < idle_after:
            pause = interval
            continue
        try:
            if not queue_is_empty():
                # Work waits that this worker has not got yet, so others hold it or the queue
                # is slow to hand it out: check less and less often rather than add to the load.
                pause = min(pause * 2, BUSY_QUEUE_RECHECK_MAX_SECONDS)
                continue
            stop_own_instance(instance)
        except Exception:
            logger.exception("self-stop check failed; retrying")
            continue
        logger.info("queue empty and idle: stopping instance %s", instance)
        # Shutdown normally follows within moments; if the instance was started again before
        # it stopped, this worker lives on and must keep checking.
        pause = STOP_RECHECK_SECONDS


@worker_ready.connect
def start_self_stop(**_: object) -> None:
    instance = instance_id()
    if not instance:
        return
    thread = threading.Thread(
        target=self_stop_loop,
        args=(instance, settings.FACESITE_SELF_STOP_INTERVAL, settings.FACESITE_SELF_STOP_IDLE),
        name="self-stop",
        daemon=True,
    )
    thread.start()


@worker_shutting_down.connect
def stop_self_stop(**_: object) -> None:
    _stopping.set()
