"""The one retry policy: facesite.aws clients retry throttling themselves, with backoff."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facesite import aws

THROTTLED = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.
</Message></Error></Errors><RequestID>r</RequestID></Response>"""
STOPPED = b"""<?xml version="1.0" encoding="UTF-8"?>
<StopInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r</requestId>
<instancesSet/></StopInstancesResponse>"""


class ThrottlingEC2(BaseHTTPRequestHandler):
    """Answers the first `throttled` requests with EC2's RequestLimitExceeded, then succeeds."""

    throttled = 0
    calls: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        import time

        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append(time.monotonic())
        throttle = len(type(self).calls) <= type(self).throttled
        body = THROTTLED if throttle else STOPPED
        self.send_response(503 if throttle else 200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def throttling_endpoint(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), ThrottlingEC2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{server.server_address[1]}"
    aws.reset_clients()
    yield ThrottlingEC2
    server.shutdown()
    aws.reset_clients()


def test_throttled_calls_back_off_and_retry(throttling_endpoint):
    throttling_endpoint.throttled, throttling_endpoint.calls = 3, []
    aws.client("ec2").stop_instances(InstanceIds=["i-1"])
    calls = throttling_endpoint.calls
    assert len(calls) == 4
    # Backoff waits between attempts (botocore's standard mode: exponential with jitter).
    assert calls[-1] - calls[0] > 0


def test_throttling_that_persists_gives_up_after_the_policys_attempts(
    throttling_endpoint, monkeypatch
):
    from botocore.exceptions import ClientError
    from botocore.retries.standard import ExponentialBackoff

    # Up to ~20 s a wait in the real policy: the count is what is tested here.
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01)
    throttling_endpoint.throttled, throttling_endpoint.calls = 100, []
    with pytest.raises(ClientError, match="RequestLimitExceeded"):
        aws.client("ec2").stop_instances(InstanceIds=["i-1"])
    assert len(throttling_endpoint.calls) == 1 + aws.clients.MAX_RETRIES


@pytest.fixture
def in_process_s3(settings, monkeypatch):
    """facesite's shared S3 client on moto in this process (no endpoint), fresh before and after."""
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.AWS_ENDPOINT_URL = None
    aws.reset_clients()
    try:
        with mock_aws():
            yield aws.client("s3")
    finally:
        aws.reset_clients()


def test_s3_calls_name_the_expected_bucket_owner(in_process_s3, settings):
    s3 = in_process_s3
    sent: list[dict] = []
    s3.meta.events.register("before-call.s3", lambda params, **_: sent.append(params["headers"]))
    s3.create_bucket(Bucket="owned")  # CreateBucket has no such parameter
    s3.put_object(Bucket="owned", Key="k", Body=b"x")
    assert s3.get_object(Bucket="owned", Key="k")["Body"].read() == b"x"
    owners = [headers.get("x-amz-expected-bucket-owner") for headers in sent]
    assert owners == [None, settings.FACESITE_AWS_ACCOUNT_ID, settings.FACESITE_AWS_ACCOUNT_ID]


def test_s3_uploads_skip_100_continue_and_checksums_below_a_mebibyte(in_process_s3):
    s3 = in_process_s3
    signed: list[dict] = []
    s3.meta.events.register(
        "before-sign.s3.PutObject", lambda request, **_: signed.append(request.headers)
    )
    s3.create_bucket(Bucket="owned")
    small, large = b"Mr Bean", b"x" * aws.clients.EXPECT_CONTINUE_MIN_BYTES
    s3.put_object(Bucket="owned", Key="small", Body=small)
    s3.put_object(Bucket="owned", Key="large", Body=large)
    assert s3.get_object(Bucket="owned", Key="small")["Body"].read() == small
    expects = [headers.get("Expect") for headers in signed]
    assert expects == [None, "100-continue"]
    checksums = [name for headers in signed for name in headers if "checksum" in name.lower()]
    assert checksums == []
