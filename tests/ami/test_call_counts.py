"""The emulator counts the AWS calls it serves by service, operation and queue or bucket, and the
calls it counts are answered as before."""

import io
import json

import pytest
import requests

from ami.local.call_counts import COUNTS_PATH, call_name
from ami.local.harness import MotoServer


def signed_for(service: str) -> str:
    return (
        "AWS4-HMAC-SHA256 Credential=testing/20261130/us-east-1/"
        f"{service}/aws4_request, SignedHeaders=host, Signature=00"
    )


def environ(service: str, method: str, path: str, body: bytes = b"", **headers: str) -> dict:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "HTTP_AUTHORIZATION": signed_for(service),
        **headers,
    }


def test_an_sqs_call_is_named_by_its_operation_and_queue_and_its_body_is_still_read():
    body = json.dumps({"QueueUrl": "http://127.0.0.1:1/123456789012/app-resp-queue"}).encode()
    call = environ(
        "sqs",
        "POST",
        "/",
        body,
        CONTENT_TYPE="application/x-amz-json-1.0",
        HTTP_X_AMZ_TARGET="AmazonSQS.ReceiveMessage",
    )
    assert call_name(call) == "sqs ReceiveMessage app-resp-queue"
    assert call["wsgi.input"].read() == body


def test_an_s3_call_is_named_by_its_method_and_bucket_and_its_body_is_not_read():
    call = environ("s3", "PUT", "/app-in-bucket/photo.jpg", b"\xff\xd8", CONTENT_TYPE="image/jpeg")
    assert call_name(call) == "s3 PUT app-in-bucket"
    assert call["wsgi.input"].tell() == 0


def test_a_query_protocol_call_is_named_by_its_action():
    body = b"Action=DescribeInstanceStatus&Version=2016-11-15"
    call = environ(
        "ec2", "POST", "/", body, CONTENT_TYPE="application/x-www-form-urlencoded; charset=utf-8"
    )
    assert call_name(call) == "ec2 DescribeInstanceStatus"


@pytest.fixture(scope="module")
def counting_emulator(tmp_path_factory):
    server = MotoServer(
        tmp_path_factory.mktemp("counting-moto"), env={"FACESITE_EMULATOR_COUNT_CALLS": "1"}
    )
    yield server
    server.stop()


def test_the_emulator_counts_the_calls_it_serves_and_answers_them_as_before(counting_emulator):
    s3, sqs = counting_emulator.client("s3"), counting_emulator.client("sqs")
    s3.create_bucket(Bucket="counted-bucket")
    s3.put_object(Bucket="counted-bucket", Key="a", Body=b"first")
    s3.put_object(Bucket="counted-bucket", Key="b", Body=b"second")
    assert s3.get_object(Bucket="counted-bucket", Key="b")["Body"].read() == b"second"
    queue = sqs.create_queue(QueueName="counted-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello")
    received = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    assert [message["Body"] for message in received] == ["hello"]

    counts = requests.get(counting_emulator.endpoint + COUNTS_PATH, timeout=10).json()
    assert counts == {
        "s3 PUT counted-bucket": 3,  # the bucket, then two objects
        "s3 GET counted-bucket": 1,
        "sqs CreateQueue": 1,
        "sqs SendMessage counted-queue": 1,
        "sqs ReceiveMessage counted-queue": 1,
    }
