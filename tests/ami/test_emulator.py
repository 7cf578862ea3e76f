"""The emulator's speed-ups and memory bounds leave moto's answers as they were; its server keeps
connections alive and does not outlive the process that holds the state."""

import contextlib
import copy
import hashlib
import http.client
import os
import socket
import subprocess
import tempfile
from datetime import datetime
from types import SimpleNamespace

import boto3
import moto.backends
import moto.s3.models
import moto.sqs.models
import psutil
import pytest
from gunicorn.errors import HaltServer
from moto import mock_aws
from moto.core import utils as moto_utils
from moto.sqs.exceptions import InvalidAttributeName
from moto.sqs.models import SQSBackend

from ami.local import emulator
from ami.local.disk_bodies import DiskBodies
from ami.local.harness import free_port, wait_until


def test_the_cheap_clock_agrees_with_motos():
    before = moto_utils.unix_time()
    seconds, millis = emulator.unix_time(), emulator.unix_time_millis()
    after = moto_utils.unix_time()
    assert before - 0.01 <= seconds <= after + 0.01
    assert before * 1000 - 10 <= millis <= after * 1000 + 10


def test_a_given_moment_is_converted_by_moto_itself():
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000)
    assert emulator.unix_time(moment) == moto_utils.unix_time(moment)
    assert emulator.unix_time_millis(moment) == moto_utils.unix_time_millis(moment)


def test_install_points_moto_at_the_cheap_clock_and_a_listing_made_once(monkeypatch):
    listed = list(moto.backends.list_of_moto_modules())
    for module, name in [
        (moto.sqs.models, "unix_time"),
        (moto.sqs.models, "unix_time_millis"),
        (moto.backends, "list_of_moto_modules"),
        (SQSBackend, "is_message_valid_based_on_retention_period"),
        (SQSBackend, "get_queue_attributes"),
    ]:
        monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    emulator.install_speedups()
    assert moto.sqs.models.unix_time is emulator.unix_time
    assert moto.sqs.models.unix_time_millis is emulator.unix_time_millis
    assert list(moto.backends.list_of_moto_modules()) == listed
    assert "sqs" in moto.backends.list_of_moto_modules()


def test_sqs_visibility_and_delay_hold_under_the_cheap_clock(monkeypatch):
    monkeypatch.setattr(moto.sqs.models, "unix_time_millis", emulator.unix_time_millis)
    message = moto.sqs.models.Message("id", "body")
    assert message.visible and not message.delayed
    message.change_visibility(1)
    message.delay(1)
    assert not message.visible and message.delayed
    message.visible_at = message.delayed_until = emulator.unix_time_millis() - 1
    assert message.visible and not message.delayed


@pytest.fixture
def sqs_backend(monkeypatch):
    """A fresh in-process moto SQS backend with one queue of five messages, one in flight."""
    backend = SQSBackend("us-east-1", "123456789012")
    backend.create_queue("q", VisibilityTimeout="60")
    for index in range(5):
        backend.send_message("q", f"message {index}")
    backend.receive_message("q", 1, 0, 60)
    return backend


ATTRIBUTE_ASKS = [
    ["All"],
    ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    ["VisibilityTimeout", "All"],
    ["RedrivePolicy"],  # unset: left out
    [],
]


def test_queue_attributes_answer_as_motos(sqs_backend):
    for names in ATTRIBUTE_ASKS:
        expected = SQSBackend.get_queue_attributes(sqs_backend, "q", names)
        assert emulator.queue_attributes(sqs_backend, "q", names) == expected
    assert emulator.queue_attributes(sqs_backend, "q", ["ApproximateNumberOfMessages"]) == {
        "ApproximateNumberOfMessages": 4
    }
    for bad in (["NoSuchAttribute"], [""], ["All", "Nope"]):
        with pytest.raises(InvalidAttributeName):
            emulator.queue_attributes(sqs_backend, "q", bad)


def test_queue_attributes_are_computed_once_and_a_receive_computes_none(sqs_backend, monkeypatch):
    computed = []
    whole = moto.sqs.models.Queue.attributes

    def counted(queue):
        computed.append(queue.name)
        return whole.fget(queue)

    monkeypatch.setattr(moto.sqs.models.Queue, "attributes", property(counted))
    monkeypatch.setattr(SQSBackend, "is_message_valid_based_on_retention_period", emulator.retained)
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    emulator.queue_attributes(sqs_backend, "q", names)
    assert computed == ["q"]
    SQSBackend.get_queue_attributes(sqs_backend, "q", names)
    assert len(computed) == 1 + 3 * len(names)  # moto's own: three times a name
    computed.clear()
    assert len(sqs_backend.receive_message("q", 3, 0, 60)) == 3
    assert computed == []


def test_a_message_past_its_retention_is_not_received(sqs_backend):
    queue = sqs_backend.get_queue("q")
    message = queue._messages[-1]
    retention_ms = queue.message_retention_period * 1000
    for sent_ago_ms, kept in ((retention_ms - 5000, True), (retention_ms + 5000, False)):
        message.sent_timestamp = emulator.unix_time_millis() - sent_ago_ms
        assert emulator.retained(sqs_backend, "q", message) is kept
        assert SQSBackend.is_message_valid_based_on_retention_period(sqs_backend, "q", message) is (
            kept
        )


def test_a_disk_body_reads_and_writes_as_motos_spooled_file(tmp_path):
    body = DiskBodies(tmp_path).SpooledTemporaryFile()
    with tempfile.SpooledTemporaryFile(1024) as spooled:
        for file in (body, spooled):
            file.write(b"0123456789")
            file.seek(2)
            assert file.read(3) == b"234"
            assert file.tell() == 5
            file.seek(0)
            file.truncate()
            file.write(b"photo")
            file.seek(0)
            assert file.read() == b"photo"
    assert [path.read_bytes() for path in tmp_path.iterdir()] == [b"photo"]
    body.close()
    assert list(tmp_path.iterdir()) == [] and body.closed
    with pytest.raises(ValueError):
        body.read()


def test_a_disk_body_is_empty_and_has_no_file_until_written(tmp_path):
    bodies = DiskBodies(tmp_path)
    first, second = bodies.SpooledTemporaryFile(), bodies.SpooledTemporaryFile()
    assert first.path != second.path
    assert first.read() == b"" and first.seek(0, os.SEEK_END) == 0
    first.seek(0)
    assert first.truncate() == 0
    assert list(tmp_path.iterdir()) == []
    second.truncate(3)  # a truncation that grows the body makes the file, as writing does
    assert [path.read_bytes() for path in tmp_path.iterdir()] == [b"\0\0\0"]
    first.close()  # nothing to delete
    assert first.closed
    with pytest.raises(ValueError):
        first.read()


def test_s3_answers_the_same_with_its_bodies_on_disk(memory_bounds):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="in-bucket")
        s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
        first = s3.put_object(Bucket="in-bucket", Key="face.jpg", Body=b"first photo")
        s3.put_object(Bucket="in-bucket", Key="face.jpg", Body=b"second photo")
        assert sorted(path.read_bytes() for path in memory_bounds.iterdir()) == [
            b"first photo",
            b"second photo",
        ]
        latest = s3.get_object(Bucket="in-bucket", Key="face.jpg")
        assert latest["Body"].read() == b"second photo"
        assert latest["ETag"] == f'"{hashlib.md5(b"second photo").hexdigest()}"'
        older = s3.get_object(Bucket="in-bucket", Key="face.jpg", VersionId=first["VersionId"])
        assert older["Body"].read() == b"first photo"
        ranged = s3.get_object(Bucket="in-bucket", Key="face.jpg", Range="bytes=7-11")
        assert ranged["Body"].read() == b"photo"
        s3.delete_object(Bucket="in-bucket", Key="face.jpg", VersionId=first["VersionId"])
        assert [path.read_bytes() for path in memory_bounds.iterdir()] == [b"second photo"]


def test_models_are_not_tracked_for_ever(memory_bounds):
    tracked = len(moto.sqs.models.Message.instances_tracked)
    message = moto.sqs.models.Message("id", "body")
    assert isinstance(message, moto.sqs.models.Message) and message.body == "body"
    assert len(moto.sqs.models.Message.instances_tracked) == tracked


def test_a_copied_key_has_a_body_of_its_own(memory_bounds):
    # moto deep-copies keys (listing versions): the copy's disposal must not take the original's.
    key = moto.s3.models.FakeKey("face.jpg", b"photo", "123456789012", "us-east-1")
    copied = copy.deepcopy(key)
    copied.dispose()
    assert key.value == b"photo"
    assert [path.read_bytes() for path in memory_bounds.iterdir()] == [b"photo"]


def test_a_killed_emulators_bodies_are_removed_by_the_next(tmp_path):
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: its pid runs nothing now
    orphaned = tmp_path / f"{emulator.BODIES_PREFIX}{finished.pid}-abc"
    live = tmp_path / f"{emulator.BODIES_PREFIX}{os.getpid()}-def"
    other = tmp_path / "facesite-bench-xyz"
    for folder in (orphaned, live, other):
        folder.mkdir()
        (folder / "body").write_bytes(b"photo")
    emulator.remove_orphaned_bodies(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([live.name, other.name])


def serving_arbiter(listening: bool) -> SimpleNamespace:
    return SimpleNamespace(LISTENERS=[object()] if listening else [])


def test_a_worker_dying_while_serving_stops_the_master_and_its_bodies_go(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    bodies = tmp_path / f"{emulator.BODIES_PREFIX}4242-abc"
    bodies.mkdir()
    with pytest.raises(HaltServer) as halted:
        emulator.stop_with_the_worker(serving_arbiter(True), SimpleNamespace(pid=4242))
    assert halted.value.exit_status != 0
    assert not bodies.exists()


def test_a_worker_stopped_by_its_master_only_takes_its_bodies(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / f"{emulator.BODIES_PREFIX}4242-abc").mkdir()
    others = tmp_path / f"{emulator.BODIES_PREFIX}42420-abc"
    others.mkdir()
    emulator.stop_with_the_worker(serving_arbiter(False), SimpleNamespace(pid=4242))
    assert [path.name for path in tmp_path.iterdir()] == [others.name]


@pytest.fixture
def served(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        emulator.command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: port_open(port), 30, "the emulator")
        yield port, psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait()


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def test_the_emulator_keeps_connections_alive_and_stops_when_its_worker_dies(served):
    port, master = served
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    for _ in range(2):
        connection.request("GET", "/moto-api/")
        response = connection.getresponse()
        response.read()
        answers.append((response.status, response.getheader("Connection"), connection.sock))
    (first, second) = answers
    assert first[:2] == second[:2] == (200, "keep-alive")
    assert first[2] is second[2]  # the same socket served both
    connection.close()
    [worker] = master.children()
    worker.kill()  # as the OOM killer would
    assert master.wait(timeout=15) != 0
