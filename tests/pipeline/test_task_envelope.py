"""The web tier writes task messages itself (recognition.messages.task_envelope) with its shared
SQS client: each must be the message `app.send_task` (Celery and kombu's SQS transport) would
have put on the request queue, but for kombu's random delivery tag."""

import json

import pytest

from ami.local.harness import Stack

pytestmark = pytest.mark.e2e

SEND_BOTH = """
import uuid
from facesite.celery_app import app
from recognition import messages
tasks = [
    (messages.RECOGNIZE_UPLOAD, ("caf\\u00e9 \\"x\\".jpg", "v" * 64, "f" * 64)),
    (messages.API_RECOGNIZE, ("api/k", "f" * 64, 3)),
    (messages.API_VERIFY, ("api/k", "", "Some One", "f" * 64)),
]
for name, args in tasks:
    request_id = str(uuid.uuid4())
    app.send_task(name, args=args, task_id=request_id)
    messages._send_task(name, request_id, args)
"""


def without_delivery_tag(body: str) -> str:
    tag = json.loads(body)["properties"]["delivery_tag"]
    assert tag and body.count(tag) == 1
    return body.replace(tag, "")


def test_task_messages_are_the_ones_celery_would_send(moto_server, tmp_path):
    stack = Stack(moto_server, tmp_path)
    stack.manage("provision")
    stack.manage("shell", "-c", SEND_BOTH)

    sqs = stack.client("sqs")
    bodies: list[str] = []
    while len(bodies) < 6:
        received = sqs.receive_message(
            QueueUrl=stack.queue_url("req-queue"), MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        assert received, f"only {len(bodies)} of 6 messages arrived"
        bodies += [message["Body"] for message in received]
    by_task: dict[str, list[str]] = {}
    for body in bodies:
        by_task.setdefault(json.loads(body)["headers"]["id"], []).append(body)
    assert len(by_task) == 3
    for celerys, ours in by_task.values():
        # Byte for byte, once the tag (a UUID either way) is set aside.
        assert without_delivery_tag(celerys) == without_delivery_tag(ours)
