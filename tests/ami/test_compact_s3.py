"""The emulator's compact S3 records answer as moto's own do, and stay small."""

import gc
import hashlib
import tracemalloc
from typing import Any

import boto3
import moto.s3.models
from moto import mock_aws
from moto.moto_api._internal import mock_random

from ami.local import compact_s3, disk_bodies, emulator

# What changes from one run to the next whoever stores the objects (upload ids are from
# os.urandom, not moto's seeded random).
VOLATILE = {"ResponseMetadata", "LastModified", "Initiated", "UploadId"}


def stable(answer: Any) -> Any:
    """An answer without its timestamps and request metadata."""
    if isinstance(answer, dict):
        return {key: stable(value) for key, value in answer.items() if key not in VOLATILE}
    if isinstance(answer, list):
        return [stable(value) for value in answer]
    if hasattr(answer, "read"):  # a streamed body
        return answer.read()
    return answer


def s3_session() -> list[Any]:
    """What S3 answers to a session that touches every use of an object's record."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="in-bucket")
    s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket="out-bucket")
    answers = [
        s3.put_object(Bucket="in-bucket", Key="face.jpg", Body=b"first photo"),
        s3.put_object(
            Bucket="in-bucket",
            Key="face.jpg",
            Body=b"second photo",
            ContentType="image/jpeg",
            ContentLanguage="en",
            Metadata={"Person": "Ada", "request-id": "42"},
            Tagging="kind=face&stage=upload",
            ChecksumAlgorithm="SHA256",
        ),
        s3.put_object(Bucket="out-bucket", Key="face", Body=b"Ada"),
        s3.put_object(Bucket="out-bucket", Key="open", Body=b"Bob", ACL="public-read"),
    ]
    for bucket, key in [("in-bucket", "face.jpg"), ("out-bucket", "face"), ("out-bucket", "open")]:
        answers += [
            s3.head_object(Bucket=bucket, Key=key),
            s3.get_object(Bucket=bucket, Key=key),
            s3.get_object(Bucket=bucket, Key=key, Range="bytes=1-3"),
            s3.get_object_tagging(Bucket=bucket, Key=key),
            s3.get_object_acl(Bucket=bucket, Key=key),
        ]
    s3.put_object_acl(Bucket="out-bucket", Key="face", ACL="public-read")
    s3.put_object_tagging(
        Bucket="out-bucket", Key="face", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}
    )
    answers += [
        s3.get_object_acl(Bucket="out-bucket", Key="face"),
        s3.get_object_tagging(Bucket="out-bucket", Key="face"),
        s3.head_object(Bucket="out-bucket", Key="face"),
    ]
    s3.delete_object_tagging(Bucket="out-bucket", Key="face")
    answers.append(s3.get_object_tagging(Bucket="out-bucket", Key="face"))
    for directive in ("COPY", "REPLACE"):
        answers.append(
            s3.copy_object(
                Bucket="out-bucket",
                Key=f"copy-{directive}",
                CopySource={"Bucket": "in-bucket", "Key": "face.jpg"},
                MetadataDirective=directive,
                Metadata={"copied": "yes"},
            )
        )
        answers.append(s3.head_object(Bucket="out-bucket", Key=f"copy-{directive}"))
        answers.append(s3.get_object_tagging(Bucket="out-bucket", Key=f"copy-{directive}"))
    upload = s3.create_multipart_upload(Bucket="out-bucket", Key="parts", ContentType="text/plain")
    part = s3.upload_part(
        Bucket="out-bucket",
        Key="parts",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=b"one part",
    )
    answers += [
        upload,
        part,
        s3.complete_multipart_upload(
            Bucket="out-bucket",
            Key="parts",
            UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        ),
        s3.get_object(Bucket="out-bucket", Key="parts"),
        s3.list_objects_v2(Bucket="out-bucket"),
        s3.list_object_versions(Bucket="in-bucket"),
        s3.delete_object(Bucket="out-bucket", Key="face"),
        s3.delete_object(Bucket="in-bucket", Key="face.jpg"),
        s3.list_object_versions(Bucket="in-bucket"),
        s3.list_objects_v2(Bucket="out-bucket"),
    ]
    return stable(answers)


def seeded_session() -> list[Any]:
    mock_random.seed(11)  # the same version ids and upload ids in both runs
    with mock_aws():
        return s3_session()


def test_s3_answers_the_same_with_compact_records(moto_restored, tmp_path):
    expected = seeded_session()
    emulator.install_memory_bounds(tmp_path)
    assert moto.s3.models.FakeKey is compact_s3.CompactKey
    assert seeded_session() == expected


def test_a_put_answers_its_etag_without_reading_the_body_back(memory_bounds, monkeypatch):
    reads = []
    original_read = disk_bodies.DiskBody.read
    monkeypatch.setattr(
        disk_bodies.DiskBody,
        "read",
        lambda body, *args: reads.append(body) or original_read(body, *args),
    )
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="in-bucket")
        stored = s3.put_object(Bucket="in-bucket", Key="face.jpg", Body=b"photo")
        assert stored["ETag"] == f'"{hashlib.md5(b"photo").hexdigest()}"'
        assert reads == []
        assert s3.get_object(Bucket="in-bucket", Key="face.jpg")["Body"].read() == b"photo"


def test_a_compact_record_holds_everything_in_its_slots(memory_bounds):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="in-bucket")
        s3.put_object(Bucket="in-bucket", Key="face.jpg", Body=b"photo", ContentType="image/png")
        backend = moto.s3.models.s3_backends["123456789012"]["aws"]
        key = backend.buckets["in-bucket"].keys["face.jpg"]
        assert isinstance(key, compact_s3.CompactKey)
        s3.list_object_versions(Bucket="in-bucket")  # deep-copies every key
        assert dict not in map(type, gc.get_referents(key))  # no instance dictionary was made
        assert vars(key) == {}  # (this makes one) moto set no attribute outside the slots
        assert key.metadata["Content-Type"] == "image/png"
        assert key.arn not in backend.tagger.tags  # no tags, no entry


# Measured with CPython 3.11 and moto 5.2.5 (in-process, versioned bucket, 5-byte bodies): moto's
# own record 3,470 bytes an object, the compact one 1,570.
RECORD_BYTES_LIMIT = 2_000
# moto's in-process mock (not its server) reloads its URL module at every request, and keeps
# some of it: not part of what an object costs.
URL_RELOADS = tracemalloc.Filter(False, "<frozen importlib._bootstrap>", all_frames=True)


def test_a_stored_object_costs_less_than_the_bound(memory_bounds):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="in-bucket")
        s3.put_bucket_versioning(Bucket="in-bucket", VersioningConfiguration={"Status": "Enabled"})
        stored = 0

        def traced_after(count: int) -> tracemalloc.Snapshot:
            nonlocal stored
            for index in range(stored, stored + count):
                s3.put_object(Bucket="in-bucket", Key=f"upload{index:05d}_face.jpg", Body=b"photo")
            stored += count
            gc.collect()
            return tracemalloc.take_snapshot().filter_traces([URL_RELOADS])

        tracemalloc.start(6)  # deep enough to see the reload
        try:
            # What is made once (the client's caches, first-use imports) is in the first hundred.
            first = traced_after(100)
            count = 200
            grown = traced_after(count).compare_to(first, "filename")
        finally:
            tracemalloc.stop()
    per_object = sum(stat.size_diff for stat in grown) / count
    assert per_object < RECORD_BYTES_LIMIT
