"""The pipeline's pure parts and its database bookkeeping, without AWS."""

import threading
import uuid

import pytest
from django.utils import timezone

from recognition.models import UploadRequest, file_stem
from recognition.responses import Waiters, record_result
from recognition.results import Result, failure, success
from recognition.uploads import UploadRefused, clean_file_name, reply_for


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


@pytest.mark.parametrize("raw", ["", "/", "..", "a\nb.jpg", "x" * 400 + ".jpg"])
def test_clean_file_name_refuses_unusable_names(raw):
    with pytest.raises(UploadRefused) as refused:
        clean_file_name(raw)
    assert refused.value.status == 400


def test_file_stem():
    assert file_stem("test_00.jpg") == "test_00"
    assert file_stem("archive.tar.gz") == "archive.tar"
    assert file_stem("noext") == "noext"


def test_result_round_trips_through_json():
    result = success("Paul", 0.12, 1).stamped(request_id="r", instance="i-1", started=1.0)
    assert Result.from_json(result.to_json()) == result
    assert success("Unknown", float("inf"), 1).distance is None
    assert Result.from_json('{"status": 422, "extra": 1}') == Result(status=422)


@pytest.mark.django_db
def test_record_result_is_idempotent_and_reply_follows_it():
    row = UploadRequest.objects.create(file_name="test_07.jpg", received_at=timezone.now())
    result = success("Bob", 0.3, 1).stamped(request_id=str(row.pk), instance="i-7", finished=2.0)
    assert record_result(result) is True
    # A redelivered task's second result changes nothing.
    assert record_result(failure("late duplicate", 500).stamped(request_id=str(row.pk))) is False
    row.refresh_from_db()
    assert (row.status, row.name, row.worker_instance_id) == ("done", "Bob", "i-7")
    assert reply_for(row).status == 200 and reply_for(row).text == "test_07:Bob"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("result", "status", "text"),
    [
        (failure("No face was found in a.jpg.", 422, faces=0), 422, "No face was found in a.jpg."),
        (failure("The file is not an image.", 415), 415, "The file is not an image."),
        (failure("Recognition failed: boom", 500), 500, "Recognition failed: boom"),
    ],
)
def test_reply_for_failures(result, status, text):
    row = UploadRequest.objects.create(file_name="a.jpg", received_at=timezone.now())
    record_result(result.stamped(request_id=str(row.pk)))
    row.refresh_from_db()
    assert (reply_for(row).status, reply_for(row).text) == (status, text)


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
