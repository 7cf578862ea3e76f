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
    COMPLETED = "completed"  # a service API task (detect, verify, embed) that gave its result
    NO_FACE = "no_face"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_IMAGE = "corrupt_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    FAILED = "failed"  # our fault, not the upload's


_HTTP_STATUS = {
    Outcome.RECOGNISED: 200,
    Outcome.COMPLETED: 200,
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
    if outcome in (Outcome.RECOGNISED, Outcome.COMPLETED):
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


# --- the service API (/api/v1/): JSON replies with an error code -----------------------------

# Each refusal's HTTP status and error code (DESIGN.md's codes). A truncated image is "not an
# image" to a client as much as a text file is; too many pixels is "too large" like too many
# bytes.
_API_ERRORS = {
    Outcome.NO_FACE: (422, "no_face"),
    Outcome.NOT_AN_IMAGE: (415, "not_an_image"),
    Outcome.CORRUPT_IMAGE: (400, "not_an_image"),
    Outcome.TOO_MANY_PIXELS: (413, "too_large"),
    Outcome.FAILED: (500, "internal_error"),
}
TIMEOUT_CODE = "timeout"


def api_error(outcome: Outcome) -> tuple[int, str]:
    """(HTTP status, error code) of an API call refused with this outcome."""
    return _API_ERRORS[outcome]


def error_body(code: str, message: str, request_id: str = "") -> dict:
    """The one shape of every API error: {"error": {"code", "message"[, "request_id"]}}."""
    error = {"code": code, "message": message}
    if request_id:
        error["request_id"] = request_id
    return {"error": error}


@dataclass(frozen=True)
class ApiReply:
    status: int
    body: dict
    request_id: str
    outcome: Outcome | None = None  # None while no result has arrived

    @property
    def ok(self) -> bool:
        return self.status == 200


def api_reply_for(row: UploadRequest) -> ApiReply:
    """An API call's JSON reply for its history row, final or not."""
    request_id = str(row.pk)
    outcome = Outcome(row.outcome) if row.outcome else None
    if row.status == Status.DONE:
        return ApiReply(200, {"request_id": request_id, **(row.result or {})}, request_id, outcome)
    if row.status in (Status.NO_FACE, Status.FAILED):
        status, code = api_error(outcome or Outcome.FAILED)
        message = row.error or "The request failed."
        return ApiReply(status, error_body(code, message, request_id), request_id, outcome)
    return ApiReply(
        STILL_WAITING_STATUS,
        error_body(
            TIMEOUT_CODE,
            f"Request {request_id} is still being processed; its result will be recorded in "
            "the history when it arrives.",
            request_id,
        ),
        request_id,
    )
