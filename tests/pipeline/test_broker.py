"""The worker's broker transport takes facesite's shared SQS client when the broker URL is
facesite's own, and leaves any other broker URL to kombu."""

from django.conf import settings
from kombu import Connection

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
