"""The 1 KB rule for the API's tasks: with the longest subject name the API accepts, every task
message fits the request queue's 1,024 bytes (the emulator enforces the limit on send)."""

import json

import pytest

from ami.local.harness import Stack
from recognition.api.errors import ApiError
from recognition.api.gallery import MAX_SUBJECT_WIRE_BYTES, clean_subject_name

pytestmark = pytest.mark.e2e


def longest_subjects() -> list[str]:
    names = []
    for unit in ("a", "é", "\u6f22", '"', "\U0001f600"):
        name = ""
        while True:
            try:
                clean_subject_name(name + unit)
            except ApiError:
                break
            name += unit
        names.append(name)
    return names


SEND = """
import sys, json
from recognition import messages
request_id, key, gallery = "0" * 36, "api/" + "0" * 36, "f" * 64
for subject in json.load(sys.stdin):
    messages.send_api_verify(request_id, key, key + "-2", subject, gallery)
    messages.send_api_verify(request_id, key, "", subject, gallery)
messages.send_api_recognize(request_id, key, gallery, 10)
messages.send_api_detect(request_id, key)
messages.send_api_embed(request_id, key)
"""


def test_every_api_task_message_fits_in_1024_bytes(moto_server, tmp_path):
    stack = Stack(moto_server, tmp_path)
    stack.manage("provision")
    subjects = longest_subjects()
    assert all(len(json.dumps(json.dumps(s))) <= MAX_SUBJECT_WIRE_BYTES for s in subjects)
    stack.manage("shell", "-c", SEND, stdin=json.dumps(subjects))

    expected = 2 * len(subjects) + 3
    sqs = stack.client("sqs")
    bodies = []
    while len(bodies) < expected:
        messages = sqs.receive_message(
            QueueUrl=stack.queue_url("req-queue"), MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        assert messages, f"only {len(bodies)} of {expected} messages arrived"
        bodies += [message["Body"] for message in messages]
    sizes = [len(body.encode()) for body in bodies]
    assert max(sizes) <= 1024, sizes
    carried = {json.loads(json.loads(body)["body"])[0][2] for body in bodies if "verify" in body}
    assert set(subjects) <= carried
