"""How a recorded result reaches the request waiting for it, in this process or another."""

import json
import threading
import uuid

import pytest
from botocore.exceptions import EndpointConnectionError
from django.core import signing
from django.utils import timezone

from recognition.lifecycle import reply_for
from recognition.messages import RECOGNIZE_UPLOAD, recognised
from recognition.models import UploadRequest
from recognition.web import uploads
from recognition.web.responses import (
    DeadLetterConsumer,
    ResponseConsumer,
    Sweeper,
    WakeListener,
    completed_fields,
    waiters,
    wake_datagram,
    woken,
)
from recognition.web.uploads import UploadRefused, handle_upload


@pytest.fixture
def stop():
    event = threading.Event()
    yield event
    event.set()


def recorded(row, **fields):
    """A result for `row` as a consumer recorded it, with the fields it completed the row with."""
    result = recognised("Alice", 0.3, 1).stamped(request_id=str(row.pk), instance="i-1", **fields)
    return result, completed_fields(result)


@pytest.fixture
def listener(stop):
    listener = WakeListener(stop, "127.0.0.1")
    listener.start()
    return listener


def waiting_row(reply_to):
    return UploadRequest.objects.create(
        file_name="a.jpg", received_at=timezone.now(), reply_to=reply_to
    )


@pytest.mark.django_db
def test_a_result_for_another_process_is_passed_to_its_wake_socket_with_its_fields(stop, listener):
    row = waiting_row(listener.address)
    unrelated = UploadRequest.objects.create(file_name="b.jpg", received_at=timezone.now())
    arrived = waiters.register(str(row.pk))
    try:
        consumer = ResponseConsumer(stop)
        with consumer.sender:
            consumer.pass_on([recorded(row), recorded(unrelated)])
        assert arrived.wait(5)
        # The request answers from the fields the datagram carried, without reading its row.
        assert arrived.completed == recorded(row)[1]
        assert arrived.completed["name"] == "Alice"
    finally:
        waiters.discard(str(row.pk))


@pytest.mark.django_db
def test_a_result_too_large_for_a_datagram_or_already_recorded_passes_on_its_id_alone(
    stop, listener
):
    consumer = ResponseConsumer(stop)
    large = waiting_row(listener.address)
    redelivered = waiting_row(listener.address)
    arrivals = [waiters.register(str(large.pk)), waiters.register(str(redelivered.pk))]
    try:
        with consumer.sender:
            big_result, fields = recorded(large, payload={"faces": ["x" * 100] * 100})
            assert len(wake_datagram(big_result, fields)) == len(str(large.pk))
            consumer.pass_on([(big_result, fields), (recorded(redelivered)[0], None)])
        for arrived in arrivals:
            assert arrived.wait(5)
            assert arrived.completed is None  # the request reads its row
    finally:
        waiters.discard(str(large.pk))
        waiters.discard(str(redelivered.pk))


def test_a_datagram_not_signed_with_the_projects_key_wakes_nobody(caplog):
    request_id = str(uuid.uuid4())
    body = recognised("Mallory", 0.0, 1).stamped(request_id=request_id).to_json()
    forged = signing.Signer(key="not the secret key", salt="facesite.wake").sign(body)
    for datagram in (forged.encode(), body.encode(), forged.encode()[:-5]):
        assert woken(datagram) == ("", None)
    assert "not a signed result" in caplog.text
    assert woken(request_id.encode()) == (request_id, None)


@pytest.mark.django_db
def test_an_unreachable_wake_socket_is_logged_not_raised(stop, caplog):
    row = waiting_row("not-an-address")
    consumer = ResponseConsumer(stop)
    with consumer.sender:
        consumer.pass_on([recorded(row)])
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
        consumer.delete_recorded(queue_dry=True)
    assert [entry["ReceiptHandle"] for entry in sqs.deleted] == ["r1", "r2"]
    assert caplog.text.count("dropping malformed message") == 2


def test_a_response_consumer_rests_after_a_partial_batch_the_longer_the_more_requests_wait(stop):
    consumer = ResponseConsumer(stop)
    consumer.sender.close()
    ids = [str(uuid.uuid4()) for _ in range(50)]
    try:
        assert consumer.pause_after(3) == 0.0  # nobody waits here
        for request_id in ids[:5]:
            waiters.register(request_id)
        assert consumer.pause_after(3) == pytest.approx(0.05)
        assert consumer.pause_after(0) == consumer.pause_after(10) == 0.0
        for request_id in ids[5:]:
            waiters.register(request_id)
        assert consumer.pause_after(1) == pytest.approx(0.2)  # the cap
    finally:
        for request_id in ids:
            waiters.discard(request_id)


@pytest.mark.django_db
def test_recorded_results_are_deleted_ten_at_a_time_or_when_the_queue_runs_dry(stop, monkeypatch):
    sqs = RecordingSQS()
    monkeypatch.setattr("recognition.web.responses.aws.client", lambda service: sqs)
    consumer = ResponseConsumer(stop)

    def batch(first: int, count: int) -> list[dict]:
        return [{"Body": "not json", "ReceiptHandle": f"r{n}"} for n in range(first, first + count)]

    with consumer.sender:
        consumer.handle(batch(0, 4))
        consumer.delete_recorded(queue_dry=False)
        assert sqs.deleted == []  # four recorded just now: they wait for more
        consumer.handle(batch(4, 8))
        consumer.delete_recorded(queue_dry=False)
        assert [entry["ReceiptHandle"] for entry in sqs.deleted] == [f"r{n}" for n in range(10)]
        consumer.delete_recorded(queue_dry=True)
    assert [entry["ReceiptHandle"] for entry in sqs.deleted] == [f"r{n}" for n in range(12)]
    assert consumer.recorded == []


@pytest.mark.django_db
def test_a_dead_lettered_task_fails_its_request_and_wakes_it(stop, monkeypatch, caplog):
    sqs = RecordingSQS()
    monkeypatch.setattr("recognition.web.responses.aws.client", lambda service: sqs)
    row = UploadRequest.objects.create(
        file_name="a.jpg", received_at=timezone.now(), status=UploadRequest.Status.QUEUED
    )
    done = UploadRequest.objects.create(
        file_name="b.jpg", received_at=timezone.now(), status=UploadRequest.Status.DONE, name="Bob"
    )
    arrived = waiters.register(str(row.pk))

    def task(request_id):
        return json.dumps({"body": "[]", "headers": {"task": RECOGNIZE_UPLOAD, "id": request_id}})

    messages = [
        {"Body": task(str(row.pk)), "ReceiptHandle": "r1"},
        {"Body": "not a task", "ReceiptHandle": "r2"},
        # A task whose result did arrive (the delete was lost): its row stays as it is.
        {"Body": task(str(done.pk)), "ReceiptHandle": "r3"},
    ]
    try:
        consumer = DeadLetterConsumer(stop)
        with consumer.sender:
            consumer.handle(messages)
            consumer.delete_recorded(queue_dry=True)
        assert arrived.is_set()
    finally:
        waiters.discard(str(row.pk))
    assert [entry["ReceiptHandle"] for entry in sqs.deleted] == ["r1", "r2", "r3"]
    assert "dead-letter consumer: dropping 'not a task'" in caplog.text
    row.refresh_from_db()
    assert (row.status, row.result_status) == (UploadRequest.Status.FAILED, 500)
    assert "dead-letter queue" in row.error
    reply = reply_for(row)
    assert reply.status == 500 and str(row.pk) in reply.text and "dead-letter" not in reply.text
    done.refresh_from_db()
    assert (done.status, done.name, done.error) == (UploadRequest.Status.DONE, "Bob", "")
