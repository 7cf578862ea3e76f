"""boto3 clients pointed at the configured AWS: the local emulator by default, real AWS when
FACESITE_AWS_ENDPOINT is empty. Every module gets its clients here, so that switch, and the one
retry policy, are decided in one place."""

import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.utils import determine_content_length
from django.conf import settings

# The one retry policy for every AWS call: botocore's standard mode retries throttling,
# transient 5xx and connection errors with exponential backoff and full jitter, and its
# client-side retry quota stops a failing endpoint from being hammered. Nothing above it adds a
# loop of its own, except for errors AWS documents as "not yet consistent" (an instance profile
# just created, in ami/image/build.py).
# botocore counts retries after the first attempt here (its "total_max_attempts" is one more).
MAX_RETRIES = 8

# The pool is sized for many web threads sharing one client (boto3 clients are thread-safe,
# sessions are not). A short connect timeout keeps an unreachable endpoint from stalling a
# scaler tick; reads outlast SQS's longest poll (20 s).
# Checksums only where an operation requires them (botocore's behaviour before 1.36): by default
# it also computes a CRC32 for every upload and asks for and checks one on every download, about
# a tenth of the Python work of each S3 call on the request path. TLS already protects the
# bodies in transit on AWS, and S3 checks what it stores.
_CONFIG = Config(
    retries={"max_attempts": MAX_RETRIES, "mode": "standard"},
    max_pool_connections=64,
    connect_timeout=2,
    read_timeout=30,
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
# botocore sends every S3 upload's headers alone first and waits for "100 Continue" before the
# body, whatever its size: a round trip and a wait per put. That spares sending a body S3 would
# refuse, which only pays off for large bodies; below this size the body goes with the headers.
EXPECT_CONTINUE_MIN_BYTES = 1024 * 1024
_session: boto3.session.Session | None = None
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def _new_session() -> boto3.session.Session:
    credentials = settings.AWS_CREDENTIALS
    if credentials is None:
        return boto3.session.Session()
    key, secret = credentials
    return boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret)


def client(service: str) -> Any:
    """A process-wide boto3 client for `service` ("s3", "sqs", "ec2", ...)."""
    global _session
    with _lock:
        if service not in _clients:
            # One session per process: it caches the parsed service models, which makes a new
            # client ~10x cheaper (a worker forked from a warm runner builds its own in ms).
            _session = _session or _new_session()
            new = _session.client(
                service,
                endpoint_url=settings.AWS_ENDPOINT_URL,
                region_name=settings.AWS_REGION,
                config=_CONFIG,
            )
            if service == "s3":
                expect_bucket_owner(new, settings.FACESITE_AWS_ACCOUNT_ID)
                new.meta.events.register_last("before-call.s3", send_small_bodies_at_once)
            _clients[service] = new
        return _clients[service]


def expect_bucket_owner(s3: Any, account: str) -> None:
    """Every call of `s3` that accepts ExpectedBucketOwner carries `account`: bucket names are
    global, and a bucket of the same name in someone else's account is then refused (403)
    instead of read from or written to."""

    def add_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
        if "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", account)

    s3.meta.events.register("provide-client-params.s3", add_owner)


def send_small_bodies_at_once(params: dict[str, Any], **_: Any) -> None:
    """No "Expect: 100-continue" on an upload smaller than EXPECT_CONTINUE_MIN_BYTES (a body of
    unknown length keeps it)."""
    if params["headers"].get("Expect") != "100-continue":
        return
    length = determine_content_length(params.get("body"))
    if length is not None and length < EXPECT_CONTINUE_MIN_BYTES:
        del params["headers"]["Expect"]


def reset_clients() -> None:
    """Forget cached clients (and their sockets) but keep the session's parsed models: after a
    fork, or when tests point settings at another endpoint."""
    with _lock:
        _clients.clear()
