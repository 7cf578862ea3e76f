"""The worker's message consumer: Celery's own, except for request-queue messages it cannot run.

Celery rejects a body that is not a task, or names a task this worker lacks, or is invalid,
without requeueing it. On a queue with a redrive policy kombu then leaves the message to SQS,
which hands it out again after every visibility timeout until it is dead-lettered after
FACESITE_MAX_RECEIVES deliveries (minutes on AWS); meanwhile the queue is never empty, so no idle
worker stops its instance. Worse, for a task name it lacks and headers without an id, Celery
decodes the body to report it, and an undecodable body then stops the worker ("Unrecoverable
error"). This consumer deletes each such message at once, with one log line naming it.
"""

import logging
from typing import Any

from celery.worker.consumer import Consumer
from kombu.message import Message

logger = logging.getLogger(__name__)

# How much of a dropped message the log line shows (request-queue messages are <= 1 KB).
LOGGED_CHARACTERS = 300


class PoisonDroppingConsumer(Consumer):
    """Celery's consumer; a message that is not a task this worker can run is deleted."""

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self.drop(message, "it is not a task")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        self.drop(message, f"it names a task this worker does not have ({exc!r})")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self.drop(message, f"it is not a valid task ({exc!r})")

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self.drop(message, f"its body cannot be decoded ({exc!r})")

    def drop(self, message: Message, reason: str) -> None:
        logger.error(
            "dropping a request-queue message because %s: headers %s, body %s",
            reason,
            repr(message.headers)[:LOGGED_CHARACTERS],
            repr(message.body)[:LOGGED_CHARACTERS],
        )
        message.ack_log_error(logger, self.connection_errors)
