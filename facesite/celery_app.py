"""The Celery app: tasks travel over Amazon SQS (moto locally), one queue, metadata only."""

import os
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")

app = Celery("facesite")
# The worker imports its task module (CELERY_IMPORTS); the web tier sends tasks by name.
app.config_from_object("django.conf:settings", namespace="CELERY")


# Headers Celery always writes but whose absence the worker reads as the same default. Dropping
# them (and the reprs, which duplicate the arguments) is what fits a task into SQS's 1,024 bytes
# on the request queue without raising the limit; tests/pipeline/test_message_size.py proves it.
_DEFAULT_HEADERS = {
    "shadow": None,
    "eta": None,
    "expires": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "parent_id": None,
    "ignore_result": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
_REDUNDANT_HEADERS = ("argsrepr", "kwargsrepr", "origin", "root_id")


@before_task_publish.connect
def trim_task_message(headers: dict[str, Any], properties: dict[str, Any], **_: Any) -> None:
    for name, default in _DEFAULT_HEADERS.items():
        value = headers.get(name, default)
        if value == default or (name == "timelimit" and list(value) == default):
            headers.pop(name, None)
    for name in _REDUNDANT_HEADERS:
        headers.pop(name, None)
    # No result backend on SQS: nothing replies to this address.
    properties.pop("reply_to", None)
