"""An API call's model work: the same journey as a course upload (recognition.web.uploads):
the images to S3, a task on the request queue, a history row, the result from the response
queue. Only the S3 keys ("api/<request id>", unique, so never overwritten) and the task differ.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from recognition import lifecycle
from recognition.api.errors import ApiError
from recognition.engine import ImageError, load_image
from recognition.lifecycle import ApiReply, api_reply_for
from recognition.models import UploadRequest
from recognition.web.uploads import UploadRefused, new_request, run_request

FILE_NAME_LENGTH = 200  # of the history's file_name column (255)


@dataclass(frozen=True)
class Image:
    """An uploaded image that decodes: its file name (for the history and replies) and bytes."""

    name: str
    data: bytes


def display_name(raw: str | None) -> str:
    name = posixpath.basename((raw or "").replace("\\", "/")).strip()
    name = "".join(char for char in name if ord(char) >= 32)
    return name[:FILE_NAME_LENGTH] or "image"


def read_image(upload: UploadedFile, field: str = "image") -> Image:
    """The bytes of one uploaded image, refused (ApiError) when too large, empty or not an
    image. Decoding here, as the course endpoint does, keeps bad input off the queue."""
    name = display_name(upload.name)
    limit = settings.FACESITE_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise ApiError(
            413, "too_large", f"{name} is larger than the {limit // (1024 * 1024)} MB limit."
        )
    if upload.size == 0:
        raise ApiError(400, "bad_request", f"The file in '{field}' ({name}) is empty.")
    data = upload.read()
    try:
        load_image(data, max_pixels=settings.FACESITE_MAX_PIXELS)
    except ImageError as error:
        status, code = lifecycle.api_error(lifecycle.outcome_of(error))
        raise ApiError(status, code, f"{name}: {error.message}") from error
    return Image(name, data)


def object_keys(row: UploadRequest, count: int) -> list[str]:
    request_key = f"api/{row.pk}"
    return [request_key] + [f"{request_key}-{index + 1}" for index in range(1, count)]


# Sends the call's task: (request id, its S3 keys, the gallery version the row names).
SendApiTask = Callable[[str, list[str], str], None]


def call(kind: str, images: list[Image], send: SendApiTask) -> ApiReply:
    """Store, queue and wait for one API call; the reply, final or a 504, from its history
    row. Raises ApiError(503) when storage or queueing is unavailable."""
    row = new_request(images[0].name, kind)
    keys = object_keys(row, len(images))
    try:
        return run_request(
            row,
            [(key, image.data) for key, image in zip(keys, images, strict=True)],
            lambda row, versions: send(str(row.pk), keys, row.gallery_version),
            api_reply_for,
        )
    except UploadRefused as refusal:
        raise ApiError(refusal.status, "unavailable", refusal.message, str(row.pk)) from refusal


def answer(reply: ApiReply) -> dict:
    """The body of a successful reply; raises the reply's error otherwise."""
    if reply.ok:
        return reply.body
    error = reply.body["error"]
    raise ApiError(reply.status, error["code"], error["message"], reply.request_id)
