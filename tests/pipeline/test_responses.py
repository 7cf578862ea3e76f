"""How a recorded result reaches the request waiting for it, in this process or another, and
how the response consumers of one machine take turns to poll."""

import json
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from botocore.exceptions import EndpointConnectionError
from django.conf import settings as django_settings
from django.core import signing
from django.utils import timezone

from recognition.lifecycle import reply_for
from recognition.messages import RECOGNIZE_UPLOAD, recognised
from recognition.models import UploadRequest
from recognition.web import uploads
from recognition.web.responses import (
    STANDBY_RETRY_SECONDS,
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


# --- one response consumer of a machine polls at a time -------------------------------------------


class PollingProbe(ResponseConsumer):
    """A response consumer that, instead of polling SQS, notes that it polls until stopped."""

    def __init__(self, stop: threading.Event, polling: list) -> None:
        super().__init__(stop)
        self.polling = polling

    def poll(self) -> None:
        self.polling.append(self)
        self.stop.wait()


def eventually(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def machine_var_dir(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    return tmp_path


def one_polling_one_standing_by(probe: type) -> tuple[list, PollingProbe, PollingProbe]:
    """Two consumers of one name started one after the other: the first polls."""
    polling: list = []
    first, second = probe(threading.Event(), polling), probe(threading.Event(), polling)
    first.start()
    assert eventually(lambda: polling == [first])
    second.start()
    return polling, first, second


def test_one_response_consumer_of_a_machine_polls_and_another_takes_over_when_it_stops(
    machine_var_dir,
):
    polling, first, second = one_polling_one_standing_by(PollingProbe)
    time.sleep(2 * STANDBY_RETRY_SECONDS)
    assert polling == [first]

    first.stop.set()
    first.join(5)
    assert eventually(lambda: polling == [first, second], 2 * STANDBY_RETRY_SECONDS + 1)
    second.stop.set()
    second.join(5)
    assert not second.is_alive()


def test_a_consumer_standing_by_stops_without_polling(machine_var_dir):
    polling, first, second = one_polling_one_standing_by(PollingProbe)
    second.stop.set()
    second.join(2 * STANDBY_RETRY_SECONDS + 1)
    assert not second.is_alive() and polling == [first]
    first.stop.set()
    first.join(5)


def test_the_turn_of_a_process_that_dies_passes_to_a_consumer_standing_by(machine_var_dir):
    path = machine_var_dir / f"{django_settings.FACESITE_PREFIX}-response-consumer.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"lock = open({str(path)!r}, 'a')\n"
            "fcntl.flock(lock, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    polling: list = []
    consumer = PollingProbe(threading.Event(), polling)
    try:
        assert holder.stdout.readline() == "held\n"
        consumer.start()
        time.sleep(2 * STANDBY_RETRY_SECONDS)
        assert polling == []
        holder.send_signal(signal.SIGKILL)
        assert eventually(lambda: polling == [consumer], 2 * STANDBY_RETRY_SECONDS + 1)
    finally:
        holder.kill()
        holder.wait()
        consumer.stop.set()
        consumer.join(5)


def test_a_consumer_that_cannot_open_the_lock_file_polls_anyway(settings, tmp_path, caplog):
    settings.VAR_DIR = tmp_path / "missing"
    polling: list = []
    consumer = PollingProbe(threading.Event(), polling)
    consumer.start()
    try:
        assert eventually(lambda: polling == [consumer])
        assert "polls without a turn" in caplog.text
    finally:
        consumer.stop.set()
        consumer.join(5)


class DeadLetterProbe(DeadLetterConsumer):
    """A dead-letter consumer that notes that it polls until stopped."""

    def __init__(self, stop: threading.Event, polling: list) -> None:
        super().__init__(stop)
        self.polling = polling

    poll = PollingProbe.poll


def test_dead_letter_consumers_of_a_machine_take_turns_too(machine_var_dir):
    polling, first, second = one_polling_one_standing_by(DeadLetterProbe)
    time.sleep(2 * STANDBY_RETRY_SECONDS)
    assert polling == [first]
    for consumer in (first, second):
        consumer.stop.set()
        consumer.join(5)


class ProgressingProbe(PollingProbe):
    """A consumer that holds its turn and marks its progress every 0.1 s, as poll() does."""

    def poll(self) -> None:
        self.polling.append(self)
        while not self.stop.wait(0.1):
            self.mark_progress()


def test_consumers_standing_by_poll_as_well_when_the_holder_makes_no_progress(
    machine_var_dir, monkeypatch, caplog
):
    monkeypatch.setattr("recognition.web.responses.STALLED_TURN_SECONDS", 0.3)
    polling, first, second = one_polling_one_standing_by(PollingProbe)  # `first` never marks
    try:
        assert eventually(lambda: polling == [first, second], 2 * STANDBY_RETRY_SECONDS + 1)
        assert "has made no progress" in caplog.text
    finally:
        for consumer in (first, second):
            consumer.stop.set()
            consumer.join(5)


def test_a_holder_that_marks_its_progress_keeps_its_turn(machine_var_dir, monkeypatch):
    monkeypatch.setattr("recognition.web.responses.STALLED_TURN_SECONDS", 0.3)
    polling, first, second = one_polling_one_standing_by(ProgressingProbe)
    try:
        time.sleep(3 * STANDBY_RETRY_SECONDS)
        assert polling == [first]
    finally:
        for consumer in (first, second):
            consumer.stop.set()
            consumer.join(5)
