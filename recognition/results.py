"""The result message a worker puts on the response queue, and how it is sent.

Plain JSON with short, fixed fields, shared by the worker (producer) and the web tier's
response consumer, so both sides agree on one definition.
"""

import json
from dataclasses import asdict, dataclass, replace

from django.conf import settings

from facesite import aws


@dataclass(frozen=True)
class Result:
    status: int  # the HTTP status the upload should be answered with
    name: str = ""
    distance: float | None = None
    faces: int | None = None
    error: str = ""
    request_id: str = ""
    instance: str = ""  # the worker's EC2 instance id ("" for a worker started by hand)
    started: float | None = None  # epoch seconds
    finished: float | None = None

    def stamped(self, **fields: object) -> "Result":
        return replace(self, **fields)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Result":
        data = json.loads(text)
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def success(name: str, distance: float | None, faces: int) -> Result:
    # An empty gallery gives an infinite distance, which JSON cannot carry.
    finite = distance if distance is not None and distance != float("inf") else None
    return Result(status=200, name=name, distance=finite, faces=faces)


def failure(error: str, status: int, faces: int | None = None) -> Result:
    return Result(status=status, error=error, faces=faces)


def send(result: Result) -> None:
    aws.client("sqs").send_message(
        QueueUrl=settings.RESPONSE_QUEUE_URL, MessageBody=result.to_json()
    )
