"""The two messages between the tiers: the task the web tier puts on the request queue, and
the result a worker puts on the response queue.

Shared by the producer and the consumer of each, so both sides agree on one definition. The
task is sent by name: the web tier never imports the worker's code (which loads torch).
"""

import json
import uuid
from dataclasses import asdict, dataclass, replace

from celery.signals import before_task_publish
from kombu import serialization
from kombu.utils import json as kombu_json

from facesite import aws
from facesite.celery_app import app
from recognition.lifecycle import Outcome

RECOGNIZE_UPLOAD = "recognition.tasks.recognize_upload"
# The service API's tasks (recognition/worker/api_tasks.py). Their S3 keys are "api/<request
# id>[-2]", unique per request, so no object version travels.
API_RECOGNIZE = "recognition.tasks.api_recognize"
API_DETECT = "recognition.tasks.api_detect"
API_VERIFY = "recognition.tasks.api_verify"
API_EMBED = "recognition.tasks.api_embed"
# AMQP's "persistent", which Celery asks for and kombu writes in every message's properties.
PERSISTENT_DELIVERY_MODE = 2
# Every task the web tier sends; each one's id is a request history row's key.
TASK_NAMES = frozenset({RECOGNIZE_UPLOAD, API_RECOGNIZE, API_DETECT, API_VERIFY, API_EMBED})


def task_envelope(name: str, request_id: str, args: tuple) -> str:
    """The request-queue message of one task, as kombu's SQS transport writes it with
    facesite's transport options (plain JSON, body not base64-encoded): Celery builds the task
    message and `before_task_publish` trims it, exactly as `app.send_task` would."""
    queue = aws.names().request_queue
    # ignore_result=None as `send_task` passes it: the trimmed message then leaves it out.
    headers, properties, body, _ = app.amqp.as_task_v2(
        request_id, name, args=args, kwargs={}, ignore_result=None
    )
    before_task_publish.send(
        sender=name,
        body=body,
        exchange="",
        routing_key=queue,
        headers=headers,
        properties=properties,
        declare=[],
        retry_policy=None,
    )
    content_type, content_encoding, data = serialization.dumps(body, serializer="json")
    envelope = {
        "body": data,
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": PERSISTENT_DELIVERY_MODE,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": None,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return kombu_json.dumps(envelope)


def _send_task(name: str, request_id: str, args: tuple) -> None:
    """Put one task on the request queue with the process's shared SQS client; the request id
    is the task id.

    Not through `app.send_task`: kombu's producer pool gives every pooled connection a boto3
    client of its own (built from a fresh session, which parses botocore's data files again),
    and binds and declares the queue with retries on every publish. That machinery cost the
    web tier more CPU per upload than the SQS call itself; the message is the same.
    """
    aws.client("sqs").send_message(
        QueueUrl=aws.names().request_queue_url,
        MessageBody=task_envelope(name, request_id, args),
    )


def send_recognize_task(request_id: str, key: str, version: str, gallery_version: str) -> None:
    """Queue the recognition of one stored upload; the request id is the task id. Metadata
    only: with the bounded file name it fits the request queue's 1,024 bytes."""
    _send_task(RECOGNIZE_UPLOAD, request_id, (key, version, gallery_version))


def task_request_id(body: str) -> str:
    """The request id of one of facesite's tasks as SQS carries it (kombu's JSON envelope, whose
    headers name the task and its id); ValueError for any other body."""
    try:
        headers = json.loads(body)["headers"]
        if headers["task"] not in TASK_NAMES:
            raise ValueError(f"not a facesite task: {headers['task']!r}")
        return str(uuid.UUID(str(headers["id"])))  # request ids are the history rows' keys
    except (KeyError, TypeError) as error:
        raise ValueError(f"not a task message: {error!r}") from error


def send_api_recognize(request_id: str, key: str, gallery_version: str, top_k: int) -> None:
    _send_task(API_RECOGNIZE, request_id, (key, gallery_version, top_k))


def send_api_detect(request_id: str, key: str) -> None:
    _send_task(API_DETECT, request_id, (key,))


def send_api_verify(
    request_id: str, key: str, other_key: str, subject: str, gallery_version: str
) -> None:
    """Verify the face in ``key`` against the one in ``other_key`` or, when that is "", against
    ``subject`` in the named gallery. The subject name is bounded by the API
    (recognition.api.gallery.MAX_SUBJECT_WIRE_BYTES) so the message fits 1,024 bytes."""
    _send_task(API_VERIFY, request_id, (key, other_key, subject, gallery_version))


def send_api_embed(request_id: str, key: str) -> None:
    _send_task(API_EMBED, request_id, (key,))


@dataclass(frozen=True)
class ResultMessage:
    outcome: Outcome
    name: str = ""
    distance: float | None = None
    faces: int | None = None
    # When the outcome is the upload's fault: one sentence for the client. When it is ours
    # (FAILED): what went wrong, for the history row and the admin only.
    error: str = ""
    request_id: str = ""
    instance: str = ""  # the worker's EC2 instance id ("" for a worker started by hand)
    started: float | None = None  # epoch seconds
    finished: float | None = None
    # An API task's whole JSON result (the response queue takes 256 KiB; a result is a few KiB).
    payload: dict | None = None

    def stamped(self, **fields: object) -> "ResultMessage":
        return replace(self, **fields)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ResultMessage":
        """Raises ValueError (or TypeError) for a body that is not a result message."""
        data = json.loads(text)
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields["outcome"] = Outcome(data.get("outcome"))
        return cls(**fields)


def recognised(name: str, distance: float | None, faces: int) -> ResultMessage:
    # An empty gallery gives an infinite distance, which JSON cannot carry.
    finite = distance if distance is not None and distance != float("inf") else None
    return ResultMessage(Outcome.RECOGNISED, name=name, distance=finite, faces=faces)


def refused(outcome: Outcome, error: str, faces: int | None = None) -> ResultMessage:
    return ResultMessage(outcome, error=error, faces=faces)


def send(result: ResultMessage) -> None:
    aws.client("sqs").send_message(
        QueueUrl=aws.names().response_queue_url, MessageBody=result.to_json()
    )
