"""The emulator's speed-ups and memory bounds leave moto's answers as they were."""

import copy
import hashlib
import logging
import os
import subprocess
import tempfile
from datetime import datetime

import boto3
import moto.backends
import moto.s3.models
import moto.sqs.models
import pytest
from moto import mock_aws
from moto.core import utils as moto_utils

from ami.local import emulator
from ami.local.disk_bodies import DiskBody


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
    ]:
        monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    monkeypatch.setattr(logging.getLogger("werkzeug"), "level", logging.NOTSET)
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


def test_a_disk_body_reads_and_writes_as_motos_spooled_file(tmp_path):
    body = DiskBody(tmp_path)
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
