"""The app-tier worker process: a Celery worker that runs one task at a time and stops its own
EC2 instance when it is idle and the request queue is empty.

On AWS the instance id comes from the instance metadata service; the local instance runner
passes it in FACESITE_INSTANCE_ID. A worker started by hand has none and never self-stops.
"""

import functools
import logging
import os
import threading
import time
import urllib.request

from celery.signals import worker_ready, worker_shutting_down
from django.conf import settings

from facesite import aws

logger = logging.getLogger(__name__)

# After stopping our own instance, how long to wait before checking again.
STOP_RECHECK_SECONDS = 5.0
# The longest an idle worker waits between checks of a queue that still holds work; the scaler
# stops idle instances after its settle time anyway.
BUSY_QUEUE_RECHECK_MAX_SECONDS = 2.0

_busy = threading.Event()
_stopping = threading.Event()
_idle_since = time.monotonic()


def mark_busy() -> None:
    _busy.set()


def mark_idle() -> None:
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
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=settings.REQUEST_QUEUE_URL,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]) == 0
        and int(attributes["ApproximateNumberOfMessagesNotVisible"]) == 0
    )


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
            aws.client("ec2").stop_instances(InstanceIds=[instance])
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


def worker_argv(instance: str = "") -> list[str]:
    """The Celery worker command line every app-tier process runs."""
    node = instance or f"manual-{os.getpid()}"
    return [
        "worker",
        "--pool=solo",  # one request at a time per instance: the course's contract
        "--concurrency=1",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--queues={settings.REQUEST_QUEUE}",
        f"--hostname={node}@%h",
        f"--loglevel={settings.LOGGING['root']['level']}",
    ]


def run_worker(instance: str = "") -> None:
    """Run the worker in this process until SIGTERM (warm shutdown) or SIGINT."""
    from facesite.celery import app
    from recognition.engine import get_engine

    if instance:
        os.environ["FACESITE_INSTANCE_ID"] = instance
        instance_id.cache_clear()
    # Load the models before consuming, so the first task doesn't pay for it.
    get_engine()
    app.worker_main(worker_argv(instance))
