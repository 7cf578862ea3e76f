"""gunicorn configuration for the web tier: `gunicorn -c recognition/web/gunicorn.py facesite.wsgi`.

Threads, not processes, hold the waiting uploads: a waiting request costs a blocked thread,
so a couple of processes with many threads hold a thousand simultaneous uploads.
"""

import os
import resource
import shutil

from facesite import memory
from facesite.config import load as _load_config

_config = _load_config()
# Every process of this gunicorn counts its metrics into files here, which /metrics adds up
# (facesite/metrics.py). One folder per bind address: two gunicorns on one machine (two web
# tiers on two ports) must not empty each other's. Set before any process imports
# prometheus_client, which reads it at import.
_metrics_dir = _config.metrics_dir / _config.bind.replace(":", "_").replace("/", "_")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)
bind = _config.bind
workers = _config.web_processes
worker_class = "gthread"
threads = _config.web_threads
worker_connections = 2000
backlog = 2048
# gthread's timeout watches the worker's main loop, not requests, which may wait up to
# FACESITE_REPLY_TIMEOUT for their result.
timeout = 60
graceful_timeout = 10
keepalive = 5
# No access log: facesite.metrics' middleware logs one line per request, with its request id.
accesslog = None


def on_starting(server: object) -> None:
    # Every waiting upload holds a socket and, on SQLite, its thread's database connection
    # (two or three files): a thousand of them outgrow the common soft limit of 1,024 open
    # files. The processes gunicorn forks inherit the raised limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Counters of a previous run's processes would otherwise be added to this run's.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True)


def post_worker_init(worker: object) -> None:
    from django.urls import get_resolver

    from recognition.web.responses import start_consumers
    from recognition.web.uploads import prepare_request_path

    memory.start_tracing("web")

    # Load the URLconf and views now: the health check reaches only one process, and the
    # first upload to another shouldn't pay for the imports.
    get_resolver().resolve("/")
    prepare_request_path()
    start_consumers()


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    # Its live gauges' files go; its counters stay in the sums, as Prometheus expects.
    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server: object, worker: object) -> None:
    from recognition.web.responses import stop_consumers

    stop_consumers()
