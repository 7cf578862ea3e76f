"""gunicorn configuration for the web tier: `gunicorn -c recognition/web/gunicorn.py facesite.wsgi`.

Threads, not processes, hold the waiting uploads: a waiting request costs a blocked thread,
so a couple of processes with many threads hold a thousand simultaneous uploads.
"""

from facesite.config import load as _load_config

_config = _load_config()
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
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def post_worker_init(worker: object) -> None:
    from django.urls import get_resolver

    from recognition.web.responses import start_consumers

    # Load the URLconf and views now: the health check reaches only one process, and the
    # first upload to another shouldn't pay for the imports.
    get_resolver().resolve("/")
    start_consumers()


def worker_exit(server: object, worker: object) -> None:
    from recognition.web.responses import stop_consumers

    stop_consumers()
