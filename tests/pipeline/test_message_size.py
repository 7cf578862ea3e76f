"""The 1 KB rule: every task message, as SQS receives it, fits in 1,024 bytes.

The emulator enforces the request queue's MaximumMessageSize, so a message that does not fit
is refused when sent; the test also reads each one back and measures it."""

import json

import pytest

from ami.local.harness import Stack
from recognition.web.uploads import MAX_FILE_NAME_WIRE_BYTES, clean_file_name

pytestmark = pytest.mark.e2e


def longest_names() -> list[str]:
    """The longest file names the web tier accepts, for several kinds of character
    (a backslash is a path separator to it, so it cannot lengthen a name)."""
    names = []
    for unit in ("a", "é", "\u6f22", '"', "\U0001f600"):
        name = ""
        while True:
            try:
                clean_file_name(name + unit + ".jpg")
            except Exception:
                break
            name += unit
        names.append(name + ".jpg")
    return names


SEND = """
import sys, json
from recognition.messages import send_recognize_task
for name in json.load(sys.stdin):
    send_recognize_task("0" * 36, name, "v" * 64, "f" * 64)
"""


def test_every_request_message_fits_in_1024_bytes(moto_server, tmp_path):
    stack = Stack(moto_server, tmp_path)
    stack.manage("provision")
    names = longest_names()
    assert all(len(json.dumps(json.dumps(name))) <= MAX_FILE_NAME_WIRE_BYTES for name in names)
    stack.manage("shell", "-c", SEND, stdin=json.dumps(names))

    sqs = stack.client("sqs")
    bodies = []
    while len(bodies) < len(names):
        messages = sqs.receive_message(
            QueueUrl=stack.queue_url("req-queue"), MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        assert messages, f"only {len(bodies)} of {len(names)} messages arrived"
        bodies += [message["Body"] for message in messages]
    sizes = [len(body.encode()) for body in bodies]
    assert max(sizes) <= 1024, sizes
    carried = {json.loads(json.loads(body)["body"])[0][0] for body in bodies}
    assert carried == set(names)
