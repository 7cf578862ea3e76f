"""Deleted SQS messages' receipt handles: a repeated delete succeeds until the handle expires,
and a queue keeps no more than the handles that have not expired."""

from collections import OrderedDict

import boto3
import moto.sqs.models
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from ami.local import sqs_handles


@pytest.fixture
def sqs(memory_bounds, monkeypatch):
    """An SQS client on the in-process mock with the emulator's changes, and a clock to move:
    `sqs.later(seconds)`."""
    offset = [0.0]
    clock = moto.sqs.models.unix_time_millis
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", lambda: clock() + offset[0])
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        client.later = lambda seconds: offset.__setitem__(0, offset[0] + seconds * 1000)
        yield client


def received(sqs, url: str, visibility: int = 30) -> str:
    return sqs.receive_message(QueueUrl=url, VisibilityTimeout=visibility)["Messages"][0][
        "ReceiptHandle"
    ]


def queue(name: str) -> moto.sqs.models.Queue:
    return moto.sqs.models.sqs_backends["123456789012"]["us-east-1"].queues[name]


def refused(sqs, url: str, handle: str) -> bool:
    try:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    except ClientError as error:
        assert error.response["Error"]["Code"] == "ReceiptHandleIsInvalid"
        return True
    return False


def test_a_repeated_delete_succeeds_until_the_handle_expires(sqs):
    url = sqs.create_queue(QueueName="req-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="task")
    handle = received(sqs, url, visibility=30)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    sqs.later(29)
    assert not refused(sqs, url, handle)  # as SQS: deleted already, nothing to do
    sqs.later(2)
    assert refused(sqs, url, handle)  # expired with its visibility timeout
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"][
            "ApproximateNumberOfMessages"
        ]
        == "0"
    )


def test_an_older_handle_of_a_deleted_message_is_known_as_long_as_the_newest(sqs):
    url = sqs.create_queue(QueueName="req-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="task")
    first = received(sqs, url, visibility=1)
    sqs.later(2)  # back in the queue: received again, with a new handle
    second = received(sqs, url, visibility=30)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second)
    assert not refused(sqs, url, first)
    assert not refused(sqs, url, second)


def test_handles_never_issued_or_from_another_queue_are_refused(sqs):
    url = sqs.create_queue(QueueName="req-queue")["QueueUrl"]
    other = sqs.create_queue(QueueName="resp-queue")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="task")
    handle = received(sqs, url)
    assert refused(sqs, url, "not-a-handle")
    assert refused(sqs, other, handle)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
    assert refused(sqs, other, handle)


def test_a_queue_keeps_only_the_handles_that_have_not_expired(sqs):
    url = sqs.create_queue(QueueName="req-queue")["QueueUrl"]
    for _ in range(20):
        sqs.send_message(QueueUrl=url, MessageBody="task")
        sqs.delete_message(QueueUrl=url, ReceiptHandle=received(sqs, url, visibility=10))
        sqs.later(1)
    kept = queue("req-queue").deleted_until
    assert 9 <= len(kept) <= 11  # the last ten seconds' deletions
    assert queue("req-queue").deleted_messages == set()  # moto's own record stays empty


def test_forget_expired_drops_the_oldest_until_one_is_still_valid():
    deleted = OrderedDict([("a", 1.0), ("b", 2.0), ("c", 5.0), ("d", 3.0)])
    sqs_handles.forget_expired(deleted, now_millis=2.0)
    assert list(deleted) == ["c", "d"]  # "d" waits behind "c", which has not expired
    sqs_handles.forget_expired(deleted, now_millis=6.0)
    assert not deleted
