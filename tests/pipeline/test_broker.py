"""The worker's broker transport takes facesite's shared SQS client when the broker URL is
facesite's own, and leaves any other broker URL to kombu; the worker asks for its next message
as soon as it may."""

import time

from django.conf import settings
from kombu import Connection
from kombu.asynchronous import Hub

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
