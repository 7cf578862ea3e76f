"""An upload's journey through the web tier: validate, store in S3, queue, wait, answer.

Every refusal is an `UploadRefused` with an HTTP status and one plain sentence; the view turns
anything this module returns or raises into a text/plain reply. The service API's calls take
the same journey (`run_request`) with their own task and reply.
"""

import json
import logging
import posixpath
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import connection
from django.utils import timezone
from kombu.exceptions import OperationalError

from facesite import aws
from recognition import lifecycle
from recognition.engine import ImageError, configured_embedder_name
from recognition.engine.imaging import read_header
from recognition.gallery import snapshots
from recognition.gallery.store import latest_snapshot_version, snapshot_data
from recognition.lifecycle import Reply, reply_for
from recognition.messages import RECOGNIZE_UPLOAD, send_recognize_task, task_envelope
from recognition.metrics import observe_stages
from recognition.models import UploadRequest, file_stem
from recognition.web.responses import reply_address, waiters

logger = logging.getLogger(__name__)

# The file name travels in the task message twice JSON-escaped; this bounds its share of the
# 1,024-byte request-queue budget (the rest is Celery's envelope, the ids and the versions).
MAX_FILE_NAME_WIRE_BYTES = 300

# At most this many uploads of one process call S3 or SQS at once. A thousand simultaneous uploads
# then wait their turn on pooled connections instead of opening a thousand new ones together,
# which overflowed the emulator's listen backlog (connect timeouts) and costs a TLS handshake
# each on AWS. It is below facesite.aws's pool size, so every call finds a pooled connection.
AWS_CALLS_AT_ONCE = 32
_aws_slots = threading.BoundedSemaphore(AWS_CALLS_AT_ONCE)


class UploadRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def clean_file_name(raw: str) -> str:
    """The base name the client sent, checked to be a usable S3 key and to fit the message."""
    name = posixpath.basename(raw.replace("\\", "/")).strip()
    if not name or name in {".", ".."}:
        raise UploadRefused(400, "The uploaded file has no name.")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise UploadRefused(400, "The file name contains control characters.")
    # The stem is the output bucket's key and the reply's first part: S3 has no empty key, and
    # "." or ".." are not keys its path-style addresses can carry.
    if file_stem(name).strip() in {"", ".", ".."}:
        raise UploadRefused(400, "The file name needs a name before its extension.")
    try:
        name.encode("utf-8")  # S3 keys are UTF-8; a lone surrogate has no encoding
    except UnicodeEncodeError as error:
        raise UploadRefused(400, "The file name is not valid text.") from error
    if len(json.dumps(json.dumps(name))) > MAX_FILE_NAME_WIRE_BYTES:
        raise UploadRefused(400, "The file name is too long.")
    return name


def validate_image(data: bytes) -> None:
    """Refuse what is not an image of a supported format and a sane size before it reaches S3.

    The header alone is read: decoding here would cost up to 120 MB per 40 MP upload in each of
    the web tier's many threads at once. A file whose pixel data is truncated or corrupt is
    found by the worker's decode, which answers with the same 400 sentence through the pipeline.
    """
    try:
        read_header(data, max_pixels=settings.FACESITE_MAX_PIXELS)
    except ImageError as error:
        raise UploadRefused(
            lifecycle.http_status(lifecycle.outcome_of(error)), error.message
        ) from error


_gallery_lock = threading.Lock()


def current_gallery_version() -> str:
    """The newest gallery snapshot's version, published to S3 for the workers on first use."""
    version = latest_snapshot_version(configured_embedder_name())
    if version is None:
        return ""
    with _gallery_lock:
        if not snapshots.is_published(version):
            snapshots.publish(version, snapshot_data(version))
    return version


def handle_upload(file_name: str, data: bytes) -> Reply:
    """Store, queue and wait for one validated upload; the history row follows each stage."""
    row = new_request(file_name)
    return run_request(
        row,
        [(file_name, data)],
        lambda row, versions: send_recognize_task(
            str(row.pk), row.file_name, versions[0], row.gallery_version
        ),
        reply_for,
    )


def new_request(file_name: str, kind: str = UploadRequest.Kind.UPLOAD) -> UploadRequest:
    """The history row of a request that has just arrived, naming this process to wake."""
    return UploadRequest.objects.create(
        file_name=file_name, kind=kind, received_at=timezone.now(), reply_to=reply_address()
    )


class HasStatus(Protocol):
    status: int


ReplyT = TypeVar("ReplyT", bound=HasStatus)
# Sends the request's task once its objects are stored: (row, S3 version of each object).
SendTask = Callable[[UploadRequest, list[str]], None]


def run_request(
    row: UploadRequest,
    objects: Sequence[tuple[str, bytes]],
    send: SendTask,
    reply: Callable[[UploadRequest], ReplyT],
) -> ReplyT:
    """The journey every request takes, whatever its task: put its objects (S3 key, bytes) in
    the input bucket, send its task, wait for the result and answer from the history row.
    Raises UploadRefused(503) when storage or queueing fails."""
    request_id = str(row.pk)
    waiter = waiters.register(request_id)
    try:
        try:
            store_and_queue(row, objects, send)
        except (BotoCoreError, ClientError, OperationalError) as error:
            logger.error(
                "request %s (%s) could not be stored or queued: %s",
                request_id,
                row.file_name,
                error,
            )
            unavailable = "Storage or queueing is unavailable right now; try again shortly."
            # The objects may have been stored before queueing failed: the row says so.
            UploadRequest.objects.filter(pk=row.pk).update(
                status=UploadRequest.Status.FAILED,
                error=f"{unavailable} ({error})",
                reply_status=503,
                s3_version=row.s3_version,
                gallery_version=row.gallery_version,
                stored_at=row.stored_at,
            )
            raise UploadRefused(503, unavailable) from error
        if connection.vendor != "sqlite":
            # Waiting can take long: a pooled connection goes back to the pool meanwhile, or a
            # few hundred waiting requests would drain it. (A SQLite connection is this
            # thread's own file handle, and opening it again costs more than the query.)
            connection.close()
        waiter.wait(settings.FACESITE_REPLY_TIMEOUT)
    finally:
        waiters.discard(request_id)

    if waiter.completed is None:
        row.refresh_from_db()
    else:
        # The consumer that completed the row runs in this process and handed over its fields.
        for field, value in waiter.completed.items():
            setattr(row, field, value)
    answer = reply(row)
    replied_at = timezone.now()
    UploadRequest.objects.filter(pk=row.pk).update(
        replied_at=replied_at, reply_status=answer.status
    )
    observe_stages(row, replied_at)
    return answer


def store_and_queue(
    row: UploadRequest, objects: Sequence[tuple[str, bytes]], send: SendTask
) -> None:
    """Put the request's objects in the input bucket and send its task, recording both stages.

    Both stages' timestamps go to the row in one write once the task is sent: the row was
    written when the request arrived, so a result that comes back sooner still finds it, and
    it keeps its final status.
    """
    versions = []
    for key, data in objects:
        with _aws_slots:
            stored = aws.client("s3").put_object(
                Bucket=aws.names().input_bucket, Key=key, Body=data
            )
        versions.append(stored.get("VersionId") or "")
    row.s3_version = versions[0]
    row.gallery_version = current_gallery_version()
    row.stored_at = timezone.now()
    with _aws_slots:
        send(row, versions)
    row.queued_at = timezone.now()
    stages = {
        "s3_version": row.s3_version,
        "gallery_version": row.gallery_version,
        "stored_at": row.stored_at,
        "queued_at": row.queued_at,
    }
    queued = (
        UploadRequest.objects.filter(pk=row.pk)
        .exclude(status__in=UploadRequest.FINAL_STATUSES)
        .update(status=UploadRequest.Status.QUEUED, **stages)
    )
    if not queued:
        # The result was recorded first: the row keeps its final status.
        UploadRequest.objects.filter(pk=row.pk).update(**stages)


def prepare_request_path() -> None:
    """Do once, when a web process starts, what the first request would otherwise pay for:
    the S3 and SQS clients and the task message's first build (Celery's and kombu's lazy
    imports and caches)."""
    aws.client("s3")
    aws.client("sqs")
    task_envelope(RECOGNIZE_UPLOAD, str(uuid.uuid4()), ("warm-up.jpg", "", ""))
