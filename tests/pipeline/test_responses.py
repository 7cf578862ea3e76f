"""How a recorded result reaches the request waiting for it, in this process or another."""

import threading

import pytest
from botocore.exceptions import EndpointConnectionError
from django.utils import timezone

from recognition.models import UploadRequest
from recognition.web import uploads
from recognition.web.responses import ResponseConsumer, Sweeper, WakeListener, waiters
from recognition.web.uploads import UploadRefused, handle_upload


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()


@pytest.mark.django_db
def test_a_result_for_another_process_is_passed_to_its_wake_socket(stop):
    listener = WakeListener(stop, "127.0.0.1")
    listener.start()
    row = UploadRequest.objects.create(
        file_name="a.jpg", received_at=timezone.now(), reply_to=listener.address
    )
    unrelated = UploadRequest.objects.create(file_name="b.jpg", received_at=timezone.now())
    arrived = waiters.register(str(row.pk))
    try:
        consumer = ResponseConsumer(stop)
        with consumer.sender:
            consumer.pass_on([str(row.pk), str(unrelated.pk)])
        assert arrived.wait(5)
    finally:
        waiters.discard(str(row.pk))


@pytest.mark.django_db
def test_an_unreachable_wake_socket_is_logged_not_raised(stop, caplog):
    row = UploadRequest.objects.create(
        file_name="a.jpg", received_at=timezone.now(), reply_to="not-an-address"
    )
    consumer = ResponseConsumer(stop)
    with consumer.sender:
        consumer.pass_on([str(row.pk)])
    assert "could not pass on" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_wakes_a_request_completed_without_a_word(stop):
    row = UploadRequest.objects.create(file_name="a.jpg", received_at=timezone.now())
    arrived = waiters.register(str(row.pk))
    try:
        Sweeper(stop, interval=0.02).start()
        assert not arrived.wait(0.2)
        UploadRequest.objects.filter(pk=row.pk).update(status=UploadRequest.Status.DONE)
        assert arrived.wait(5)
    finally:
        waiters.discard(str(row.pk))


class UnreachableS3:
    def put_object(self, **_: object) -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")


@pytest.mark.django_db
def test_unreachable_storage_is_a_503_recorded_in_the_history(monkeypatch):
    monkeypatch.setattr(uploads.aws, "client", lambda service: UnreachableS3())
    with pytest.raises(UploadRefused) as refusal:
        handle_upload("a.jpg", b"image bytes")
    assert refusal.value.status == 503
    assert (
        refusal.value.message == "Storage or queueing is unavailable right now; try again shortly."
    )
    row = UploadRequest.objects.get(file_name="a.jpg")
    assert (row.status, row.reply_status) == (UploadRequest.Status.FAILED, 503)
    assert waiters.pending() == []


class RecordingSQS:
    def __init__(self) -> None:
        self.deleted: list[dict] = []

    def delete_message_batch(self, QueueUrl: str, Entries: list[dict]) -> None:  # noqa: N803
        self.deleted.extend(Entries)


@pytest.mark.django_db
def test_a_malformed_result_is_dropped_and_deleted(stop, monkeypatch, caplog):
    sqs = RecordingSQS()
    monkeypatch.setattr("recognition.web.responses.aws.client", lambda service: sqs)
    messages = [
        {"Body": "not json", "ReceiptHandle": "r1"},
        {"Body": '{"outcome": "recognised", "request_id": "not-a-uuid"}', "ReceiptHandle": "r2"},
    ]
    consumer = ResponseConsumer(stop)
    with consumer.sender:
        consumer.handle(messages)
    assert [entry["ReceiptHandle"] for entry in sqs.deleted] == ["r1", "r2"]
    assert caplog.text.count("dropping malformed message") == 2
