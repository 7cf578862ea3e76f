"""The app-tier worker process: a Celery worker that runs one task at a time (what an
instance's boot script starts, through `manage.py runworker`)."""

import os

from django.conf import settings

from facesite import aws
from recognition.worker import broker, selfstop


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
        f"--queues={aws.names().request_queue}",
        f"--hostname={node}@%h",
        f"--loglevel={settings.LOGGING['root']['level']}",
    ]


def run_worker(instance: str = "") -> None:
    """Run the worker in this process until SIGTERM (warm shutdown) or SIGINT."""
    from facesite.celery_app import app
    from recognition.engine import get_engine

    if instance:
        os.environ["FACESITE_INSTANCE_ID"] = instance
        selfstop.instance_id.forget()
    # Load the models before consuming, so the first task doesn't pay for it.
    get_engine()
    app.conf.broker_transport = broker.TRANSPORT
    app.worker_main(worker_argv(instance))
