"""boto3 clients pointed at the configured AWS: the local emulator by default, real AWS when
FACESITE_AWS_ENDPOINT is empty. Every module gets its clients here, so that switch is one place."""

import threading
from typing import Any

import boto3
from botocore.config import Config
from django.conf import settings

# Standard retry mode backs off on throttling; the pool is sized for many web threads sharing
# one client (boto3 clients are thread-safe, sessions are not). A short connect timeout keeps an
# unreachable endpoint from stalling a scaler tick; reads outlast SQS's longest poll (20 s).
_CONFIG = Config(
    retries={"max_attempts": 8, "mode": "standard"},
    max_pool_connections=64,
    connect_timeout=2,
    read_timeout=30,
)
_session: boto3.session.Session | None = None
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def client(service: str) -> Any:
    """A process-wide boto3 client for `service` ("s3", "sqs", "ec2", ...)."""
    global _session
    with _lock:
        if service not in _clients:
            # One session per process: it caches the parsed service models, which makes a new
            # client ~10x cheaper (a worker forked from a warm runner builds its own in ms).
            _session = _session or boto3.session.Session()
            _clients[service] = _session.client(
                service,
                endpoint_url=settings.AWS_ENDPOINT_URL,
                region_name=settings.AWS_REGION,
                config=_CONFIG,
            )
        return _clients[service]


def reset_clients() -> None:
    """Forget cached clients (and their sockets) but keep the session's parsed models: after a
    fork, or when tests point settings at another endpoint."""
    with _lock:
        _clients.clear()
