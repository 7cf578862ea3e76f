"""The worker's broker transport takes facesite's shared SQS client when the broker URL is
facesite's own, and leaves any other broker URL to kombu; the worker asks for its next message
as soon as it may; acknowledged messages are deleted in batches."""

import time
from types import SimpleNamespace

import boto3
import pytest
from django.conf import settings
from kombu import Connection, Producer
from kombu.asynchronous import Hub
from moto import mock_aws

from facesite import aws
from recognition.worker import broker


def channel_client(url: str):
    connection = Connection(
        url,
        transport=broker.TRANSPORT,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    )
    try:
        return connection.default_channel.sqs(queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    finally:
        connection.release()


def test_facesites_broker_url_uses_the_shared_sqs_client():
    assert channel_client(settings.CELERY_BROKER_URL) is aws.client("sqs")


def test_another_broker_url_gets_a_client_of_its_own():
    client = channel_client("sqs://someone:secret@127.0.0.1:1")
    assert client is not aws.client("sqs")
    assert client.meta.endpoint_url == "http://127.0.0.1:1"


def test_the_worker_asks_for_its_next_message_without_the_event_loops_idle_sleep():
    # What the worker's event loop does between two tasks: kombu's SQS channel asks again
    # (`_loop1`) from a callback, before Celery's acknowledgement of the last task has run, and
    # no socket is open. With a polling interval of 0 the loop slept 0.1 s before asking.
    hub = Hub()
    connection = Connection(
        settings.CELERY_BROKER_URL,
        transport=broker.TRANSPORT,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    )
    try:
        channel = connection.default_channel
        channel.hub = hub
        asked = []
        channel._schedule_queue = lambda queue: asked.append(time.monotonic())
        hub.call_soon(channel._loop1, settings.CELERY_TASK_DEFAULT_QUEUE)
        loop = hub.create_loop()
        started = time.monotonic()
        while not asked:
            next(loop)
        assert asked[0] - started < 0.08
    finally:
        connection.release()
        hub.close()


# --- acknowledgements: deleted in batches ---------------------------------------------------------

ACKS_QUEUE = "acks"


@pytest.fixture
def acks_channel(settings):
    """A worker's channel on kombu's SQS transport (facesite's), consuming an in-process moto
    queue, with the event loop a worker gives it."""
    with mock_aws():
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        url = sqs.create_queue(QueueName=ACKS_QUEUE)["QueueUrl"]
        connection = Connection(
            "sqs://",
            transport=broker.TRANSPORT,
            transport_options={
                "region": settings.AWS_REGION,
                "predefined_queues": {ACKS_QUEUE: {"url": url}},
                "wait_time_seconds": 0,
            },
        )
        hub = Hub()
        try:
            channel = connection.default_channel
            channel.hub = hub
            yield SimpleNamespace(
                channel=channel, sqs=sqs, url=url, hub=hub, calls=calls_of(channel)
            )
        finally:
            connection.release()
            hub.close()


def calls_of(channel) -> list[str]:
    """The names of the SQS operations the channel's client calls from now on."""
    calls: list[str] = []
    channel.sqs(queue=ACKS_QUEUE).meta.events.register(
        "before-call.sqs", lambda model, **_: calls.append(model.name)
    )
    return calls


def received(acks, count: int) -> list:
    producer = Producer(acks.channel)
    for index in range(count):
        producer.publish({"n": index}, routing_key=ACKS_QUEUE)
    messages = [acks.channel.basic_get(ACKS_QUEUE, no_ack=False) for _ in range(count)]
    assert all(messages)
    acks.calls.clear()
    return messages


def in_queue(acks) -> int:
    """Messages still in the queue, delivered or not (not yet deleted)."""
    attributes = acks.sqs.get_queue_attributes(
        QueueUrl=acks.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def test_acknowledged_messages_are_deleted_together_once_the_delay_has_passed(acks_channel):
    acks = acks_channel
    acks.channel.basic_qos(prefetch_count=3)
    messages = received(acks, 3)
    assert not acks.channel.qos.can_consume()
    for message in messages:
        message.ack()
    # The slots are free at once (the worker may take its next message) but nothing is deleted.
    assert acks.channel.qos.can_consume_max_estimate() == 3
    assert acks.calls == [] and in_queue(acks) == 3

    time.sleep(broker.ACK_DELETE_DELAY_SECONDS)
    acks.hub.fire_timers(propagate=(Exception,))
    assert acks.calls == ["DeleteMessageBatch"]
    assert in_queue(acks) == 0


def test_ten_acknowledged_messages_are_deleted_at_once(acks_channel):
    acks = acks_channel
    for message in received(acks, 10):
        message.ack()
    assert acks.calls == ["DeleteMessageBatch"]
    assert in_queue(acks) == 0


def test_closing_the_channel_deletes_what_was_acknowledged(acks_channel):
    acks = acks_channel
    received(acks, 2)[0].ack()
    acks.channel.close()
    # kombu then makes the message not acknowledged visible again, to be delivered again.
    assert acks.calls == ["DeleteMessageBatch", "ChangeMessageVisibility"]
    assert in_queue(acks) == 1


def test_a_deletion_that_fails_is_logged_and_left_to_the_visibility_timeout(acks_channel, caplog):
    acks = acks_channel
    message = received(acks, 1)[0]
    message.delivery_info["sqs_message"]["ReceiptHandle"] = "not-a-receipt-handle"
    message.ack()
    acks.channel.delete_acknowledged()
    assert acks.calls == ["DeleteMessageBatch"]
    assert "could not delete an acknowledged message" in caplog.text
    assert in_queue(acks) == 1


def test_without_an_event_loop_an_acknowledgement_deletes_at_once(acks_channel):
    acks = acks_channel
    acks.channel.hub = None
    received(acks, 1)[0].ack()
    assert acks.calls == ["DeleteMessageBatch"]
    assert in_queue(acks) == 0


def test_a_deletion_of_ten_cancels_the_wait_and_the_next_acknowledgement_starts_a_new_one(
    acks_channel,
):
    acks = acks_channel
    messages = received(acks, 11)
    for message in messages[:10]:
        message.ack()
    assert acks.calls == ["DeleteMessageBatch"]
    assert [entry for entry in acks.hub.timer.queue if not entry[2].canceled] == []
    messages[10].ack()
    waiting = [entry for entry in acks.hub.timer.queue if not entry[2].canceled]
    assert len(waiting) == 1 and acks.calls == ["DeleteMessageBatch"]
