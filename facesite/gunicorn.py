"""gunicorn configuration for the web tier: `gunicorn -c facesite/gunicorn.py facesite.wsgi`.

Threads, not processes, hold the waiting uploads: a waiting request costs a blocked thread,
so a couple of processes with many threads hold a thousand simultaneous uploads.
"""

import os

bind = os.environ.get("FACESITE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("FACESITE_WEB_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("FACESITE_WEB_THREADS", "600"))
worker_connections = 2000
backlog = 2048
# gthread's timeout watches the worker's main loop, not requests, which may wait up to
# FACESITE_REPLY_TIMEOUT for their result.
timeout = 60
graceful_timeout = 10
keepalive = 5
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def post_worker_init(worker: object) -> None:
    from django.urls import get_resolver

    from recognition.responses import start_consumers

    # Load the URLconf and views now: the health check reaches only one process, and the
    # first upload to another shouldn't pay for the imports.
    get_resolver().resolve("/")
    start_consumers()


def worker_exit(server: object, worker: object) -> None:
    from recognition.responses import stop_consumers

    stop_consumers()
