"""The emulator's count of the AWS calls it serves, by service, operation and resource: what
`bench.overhead` reads to tell how many AWS calls a request costs each tier.

A call's CPU figure moves by a millisecond from one run to the next on a shared machine; how
many calls a request makes does not. With FACESITE_EMULATOR_COUNT_CALLS=1 the emulator counts
every call it serves under a name such as "sqs ReceiveMessage app-resp-queue" (the queue's
name), "s3 PUT app-input-bucket" (the bucket) or "ec2 DescribeInstanceStatus", and answers
GET COUNTS_PATH with the counts so far, as JSON.
"""

import io
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

COUNTS_PATH = "/facesite-emulator/calls"
# moto's own API (readiness checks, resets): not AWS calls, not counted.
MOTO_API_PATH = "/moto-api/"
# Bodies of query- and JSON-protocol calls name the operation (Action=) or the queue (QueueUrl);
# an S3 body, which names neither, is never read.
_READ_BODY_TYPES = ("application/x-amz-json", "application/x-www-form-urlencoded")
_MAX_READ_BYTES = 256 * 1024
# SigV4: "Credential=<key id>/<date>/<region>/<service>/aws4_request".
_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _body(environ: dict[str, Any]) -> bytes:
    """The request's body, put back for the application to read."""
    content_type = environ.get("CONTENT_TYPE", "")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if not content_type.startswith(_READ_BODY_TYPES) or not 0 < length <= _MAX_READ_BYTES:
        return b""
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def call_name(environ: dict[str, Any]) -> str:
    """What a call is counted as: its service, its operation (for S3, the HTTP method) and the
    queue or bucket it is about, when it names one."""
    match = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = match.group(1) if match else "unsigned"
    if service == "s3":
        bucket = environ.get("PATH_INFO", "/").lstrip("/").split("/", 1)[0]
        return " ".join(filter(None, ("s3", environ["REQUEST_METHOD"], bucket)))
    body = _body(environ)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:  # the JSON protocol (SQS): the operation in a header, the queue in the body
        operation = target.rsplit(".", 1)[-1]
        try:
            queue_url = json.loads(body or b"{}").get("QueueUrl", "")
        except (ValueError, AttributeError):
            queue_url = ""
        if not isinstance(queue_url, str):  # moto answers that call's error itself
            queue_url = ""
        return " ".join(filter(None, (service, operation, queue_url.rsplit("/", 1)[-1])))
    fields = parse_qs(environ.get("QUERY_STRING", "")) | parse_qs(body.decode("latin-1"))
    return " ".join(filter(None, (service, fields.get("Action", [""])[0])))


class CallCounter:
    """WSGI middleware: counts each call by `call_name`, and serves the counts at COUNTS_PATH."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == COUNTS_PATH:
            with self._lock:
                answer = json.dumps(dict(self.counts)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answer]
        if not environ.get("PATH_INFO", "").startswith(MOTO_API_PATH):  # the emulator's own
            name = call_name(environ)
            with self._lock:
                self.counts[name] += 1
        return self.app(environ, start_response)
