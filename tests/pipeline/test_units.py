"""The pipeline's pure parts and its database bookkeeping, without AWS."""

import json
import threading
import uuid

import pytest
from botocore.exceptions import EndpointConnectionError
from django.utils import timezone

from recognition.lifecycle import Outcome, reply_for
from recognition.messages import (
    RECOGNIZE_UPLOAD,
    ResultMessage,
    recognised,
    refused,
    task_request_id,
)
from recognition.models import UploadRequest, file_stem
from recognition.web.responses import Waiters, record_result
from recognition.web.uploads import UploadRefused, clean_file_name
from recognition.worker.backoff import retried


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("test_00.jpg", "test_00.jpg"),
        ("C:\\Users\\me\\photo.png", "photo.png"),
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("  spaced name.jpg ", "spaced name.jpg"),
    ],
)
def test_clean_file_name_keeps_the_base_name(raw, expected):
    assert clean_file_name(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "/",
        "..",
        "a\nb.jpg",
        "x" * 400 + ".jpg",
        ".jpg",
        "dir/.png",
        "..jpg",
        " .jpg",
        "\ud800.jpg",
    ],
)
def test_clean_file_name_refuses_unusable_names(raw):
    with pytest.raises(UploadRefused) as refused:
        clean_file_name(raw)
    assert refused.value.status == 400


def test_file_stem():
    assert file_stem("test_00.jpg") == "test_00"
    assert file_stem("archive.tar.gz") == "archive.tar"
    assert file_stem("noext") == "noext"


def test_result_round_trips_through_json():
    result = recognised("Paul", 0.12, 1).stamped(request_id="r", instance="i-1", started=1.0)
    assert ResultMessage.from_json(result.to_json()) == result
    assert recognised("Unknown", float("inf"), 1).distance is None
    assert ResultMessage.from_json('{"outcome": "no_face", "extra": 1}') == ResultMessage(
        Outcome.NO_FACE
    )


@pytest.mark.django_db
def test_record_result_is_idempotent_and_reply_follows_it():
    row = UploadRequest.objects.create(file_name="test_07.jpg", received_at=timezone.now())
    result = recognised("Bob", 0.3, 1).stamped(request_id=str(row.pk), instance="i-7", finished=2.0)
    written = record_result(result)
    # A redelivered task's second result changes nothing.
    assert (
        record_result(refused(Outcome.FAILED, "late duplicate").stamped(request_id=str(row.pk)))
        is None
    )
    row.refresh_from_db()
    assert (row.status, row.name, row.worker_instance_id) == ("done", "Bob", "i-7")
    # What it returns is what it wrote: the copy a waiting request completes its row with.
    assert written == {field: getattr(row, field) for field in written}
    assert reply_for(row).status == 200 and reply_for(row).text == "test_07:Bob"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("result", "status", "text"),
    [
        (
            refused(Outcome.NO_FACE, "No face was found in a.jpg.", faces=0),
            422,
            "No face was found in a.jpg.",
        ),
        (
            refused(Outcome.NOT_AN_IMAGE, "The file is not an image."),
            415,
            "The file is not an image.",
        ),
    ],
)
def test_reply_for_failures(result, status, text):
    row = UploadRequest.objects.create(file_name="a.jpg", received_at=timezone.now())
    record_result(result.stamped(request_id=str(row.pk)))
    row.refresh_from_db()
    assert (reply_for(row).status, reply_for(row).text) == (status, text)


@pytest.mark.django_db
def test_our_failure_is_one_sentence_with_the_request_id_and_no_internals():
    row = UploadRequest.objects.create(file_name="a.jpg", received_at=timezone.now())
    internals = "Recognition failed in the worker: NoSuchBucket('facesite-out-bucket')"
    record_result(refused(Outcome.FAILED, internals).stamped(request_id=str(row.pk)))
    row.refresh_from_db()
    reply = reply_for(row)
    assert reply.status == 500
    assert reply.text == (
        f"a.jpg could not be recognised because of a fault on our side; "
        f"it is recorded as request {row.pk}."
    )
    assert row.error == internals  # kept for the admin


@pytest.mark.django_db
def test_reply_while_still_waiting_is_504_naming_the_request():
    row = UploadRequest.objects.create(file_name="slow.jpg", received_at=timezone.now())
    reply = reply_for(row)
    assert reply.status == 504 and str(row.pk) in reply.text


def test_waiters_wake_only_their_request():
    waiters = Waiters()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    first_event, second_event = waiters.register(first), waiters.register(second)
    threading.Timer(0.01, waiters.wake, args=(first,)).start()
    assert first_event.wait(2)
    assert not second_event.is_set()
    assert waiters.pending() == [second]
    waiters.discard(second)
    waiters.wake(second)  # a result for a request nobody waits for here is fine
    assert waiters.pending() == []


def test_retried_backs_off_between_tries_then_raises_the_last_error():
    pauses, tries = [], []

    def put():
        tries.append(1)
        raise ConnectionError(f"try {len(tries)}")

    with pytest.raises(ConnectionError, match="try 3"):
        retried(put, "storing", attempts=3, first=0.5, cap=2.0, sleep=pauses.append)
    assert len(tries) == 3
    assert 0.25 <= pauses[0] <= 0.5 and 0.5 <= pauses[1] <= 1.0


def test_retried_returns_once_a_try_succeeds():
    answers = iter([ConnectionError("blip"), "sent"])

    def send():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    pauses = []
    assert retried(send, "sending", attempts=3, first=0.5, cap=2.0, sleep=pauses.append) == "sent"
    assert len(pauses) == 1


def test_task_request_id_reads_only_recognition_tasks():
    request_id = str(uuid.uuid4())
    envelope = {"body": "[]", "headers": {"task": RECOGNIZE_UPLOAD, "id": request_id}}
    assert task_request_id(json.dumps(envelope)) == request_id
    other_task = {"body": "[]", "headers": {"task": "other.task", "id": request_id}}
    for body in ["garbage", "[1]", '{"a": 1}', json.dumps(other_task), '{"headers": {"id": 1}}']:
        with pytest.raises(ValueError):
            task_request_id(body)


def test_health_check_names_no_internals(monkeypatch, client):
    class UnreachableAWS:
        def head_bucket(self, **_: object) -> None:
            raise EndpointConnectionError(endpoint_url="http://10.1.2.3:5000/facesite-in-bucket")

    monkeypatch.setattr("recognition.web.views.consumers_alive", lambda: True)
    monkeypatch.setattr("recognition.web.views.aws.client", lambda service: UnreachableAWS())
    reply = client.get("/healthz")
    assert reply.status_code == 503
    assert reply.content.decode() == "Storage or queues are not reachable or not provisioned."
