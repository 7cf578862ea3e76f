"""One owner for a request's life: what a worker can report about it (`Outcome`), the history
status each outcome leads to, and the HTTP reply a waiting client gets from its history row.

    received -> stored (image in S3) -> queued (task sent) -> done | no_face | failed
                                                        \\-> (no result in time: 504, row stays)

A failure that is our fault (5xx) is answered with one fixed sentence naming the request; what
went wrong is in the row's `error` for the admin, never in the reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from recognition.engine.errors import ImageError
from recognition.models import UploadRequest, file_stem

Status = UploadRequest.Status


class Outcome(StrEnum):
    """What the worker found, as its result message says it."""

    RECOGNISED = "recognised"
    NO_FACE = "no_face"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    FAILED = "failed"  # our fault, not the upload's


_HTTP_STATUS = {
    Outcome.RECOGNISED: 200,
    Outcome.NO_FACE: 422,
    Outcome.NOT_AN_IMAGE: 415,
    Outcome.CORRUPT_IMAGE: 400,
    Outcome.TOO_MANY_PIXELS: 400,
    Outcome.FAILED: 500,
}
# While no result has arrived the client is told to look in the history later.
STILL_WAITING_STATUS = 504


def outcome_of(error: ImageError) -> Outcome:
    """The outcome an unusable image leads to, wherever it was found unusable."""
    return Outcome(error.code)


def http_status(outcome: Outcome) -> int:
    return _HTTP_STATUS[outcome]


def history_status(outcome: Outcome) -> Status:
    """The final history status of a request with this outcome."""
    if outcome == Outcome.RECOGNISED:
        return Status.DONE
    if outcome == Outcome.NO_FACE:
        return Status.NO_FACE
    return Status.FAILED


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    request_id: str


def reply_for(row: UploadRequest) -> Reply:
    """The course endpoint's plain-text reply for a history row, final or not."""
    request_id = str(row.pk)
    if row.status == Status.DONE:
        return Reply(200, f"{file_stem(row.file_name)}:{row.name}", request_id)
    if row.status == Status.NO_FACE:
        return Reply(422, f"No face was found in {row.file_name}.", request_id)
    if row.status == Status.FAILED:
        status = row.result_status or http_status(Outcome.FAILED)
        if status < 500:
            # The upload's fault: the row's error is the sentence written for the client.
            return Reply(status, row.error, request_id)
        # Our fault: the row's error holds the details for the admin, never for the client.
        return Reply(
            status,
            f"{row.file_name} could not be recognised because of a fault on our side; "
            f"it is recorded as request {request_id}.",
            request_id,
        )
    return Reply(
        STILL_WAITING_STATUS,
        f"{row.file_name} is still being recognised (request {request_id}); "
        "its result will be recorded in the history when it arrives.",
        request_id,
    )
