"""Prometheus metrics at ``GET /metrics``: what each web process counts (requests, their
durations, the stages of each upload), plus collectors other apps add for what lives in the
database (the scaler's observations and actions: `add_collector`).

gunicorn runs several processes; each counts into files under ``PROMETHEUS_MULTIPROC_DIR`` (set
by recognition/web/gunicorn.py before this module is imported), and a scrape of any process
adds up all of them. Outside gunicorn (tests, runserver) the process's own registry answers.
Labels are endpoint names, statuses, stages, queues, states and actions: never a file name, a
subject's name or a key.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

logger = logging.getLogger("facesite.requests")

# From a cached health check to an upload that waits for FACESITE_REPLY_TIMEOUT (300 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "facesite_requests", "HTTP requests answered, by endpoint and status.", ["endpoint", "status"]
)
REQUEST_SECONDS = Histogram(
    "facesite_request_seconds",
    "Time from a request's arrival to its answer, by endpoint.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "facesite_upload_stage_seconds",
    "Each stage of an answered upload, from its history row's timestamps: store (received to "
    "stored in S3), queue (stored to task sent), wait (sent to a worker starting it), "
    "recognise (started to finished), reply (finished to the client's answer).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)

# Endpoints polled often whose per-request log line would drown the uploads': logged at DEBUG.
QUIET_ENDPOINTS = frozenset({"healthz", "metrics", "dashboard-data"})

_extra_collectors: list[Collector] = []


def add_collector(collector: Collector) -> None:
    """Have every scrape also collect `collector` (once per process, e.g. from an AppConfig)."""
    if collector not in _extra_collectors:
        _extra_collectors.append(collector)


def multiprocess_dir() -> str:
    # prometheus_client itself reads this variable (at import): it is not facesite's setting.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def endpoint_of(request: HttpRequest) -> str:
    """A bounded label for the URL pattern that answered: its name, the namespace of a
    namespaced app (admin), or "unmatched" (404s: their paths are anyone's choice)."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    if match.namespaces:
        return match.namespaces[0]
    return match.url_name or "other"


class RequestMetricsMiddleware:
    """Counts and times every request, and logs one line for it with its request id (the
    upload's X-Request-Id, "-" for requests that are not uploads)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        endpoint = endpoint_of(request)
        REQUESTS.labels(endpoint, str(response.status_code)).inc()
        REQUEST_SECONDS.labels(endpoint).observe(seconds)
        request_id = response.get("X-Request-Id", "")
        logger.log(
            logging.DEBUG if endpoint in QUIET_ENDPOINTS else logging.INFO,
            "request %s %s %s %d %.0f ms",
            request_id or "-",
            request.method,
            endpoint,
            response.status_code,
            seconds * 1000,
            extra={"request_id": request_id},
        )
        return response


def client_allowed(remote_address: str, networks: Iterable[ipaddress._BaseNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(remote_address)
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in networks)


def token_matches(authorization: str, token: str) -> bool:
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


class _ThisProcess:
    """The default registry as one collector, for a scrape without multiprocess files."""

    def collect(self) -> Iterable:
        return REGISTRY.collect()


def exposition() -> bytes:
    """The text a scrape returns: every process's counters plus the added collectors."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in _extra_collectors:
        registry.register(collector)
    return generate_latest(registry)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics, for clients in FACESITE_METRICS_ALLOWED_NETWORKS with the bearer token
    when FACESITE_METRICS_TOKEN is set."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if not client_allowed(request.META.get("REMOTE_ADDR", ""), settings.CONFIG.metrics_networks):
        return HttpResponse(
            "Not allowed from this address.\n", status=403, content_type="text/plain"
        )
    token = settings.FACESITE_METRICS_TOKEN
    if token and not token_matches(request.META.get("HTTP_AUTHORIZATION", ""), token):
        return HttpResponse(
            "A bearer token is required.\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
