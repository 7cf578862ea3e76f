"""The app tier's one task: recognise the face in an uploaded image.

The message carries metadata only (the S3 key and version, the gallery version); the task id is
the upload's request id. Redelivery is harmless: the same inputs give the same outputs, the
output bucket is overwritten with the same value, and the web tier ignores a second result.

Storing the output and sending the result are retried; when they still fail the message is
rejected, not acknowledged, so SQS delivers it again and, after FACESITE_MAX_RECEIVES
deliveries, moves it to the dead-letter queue, whose consumer in the web tier answers the
request.
"""

import logging
import time

from celery import shared_task
from celery.exceptions import Reject
from django.conf import settings

from facesite import aws
from recognition import messages
from recognition.engine.errors import ImageError
from recognition.gallery import snapshots
from recognition.lifecycle import Outcome, outcome_of
from recognition.messages import RECOGNIZE_UPLOAD
from recognition.models import file_stem
from recognition.worker.backoff import retried
from recognition.worker.selfstop import instance_id

logger = logging.getLogger(__name__)

# Pauses between delivery attempts: short, so that all of them fit well inside the visibility
# timeout and the message is not handed to a second worker meanwhile.
DELIVERY_FIRST_PAUSE_SECONDS = 0.5
DELIVERY_MAX_PAUSE_SECONDS = 2.0


@shared_task(name=RECOGNIZE_UPLOAD, bind=True)
def recognize_upload(task, key: str, version: str, gallery_version: str) -> None:
    request_id = task.request.id
    started = time.time()
    engine_seconds = 0.0
    try:
        outcome, engine_seconds = recognize_object(key, version, gallery_version)
    except ImageError as error:
        outcome = messages.refused(outcome_of(error), error.message)
    except Exception as error:
        # Anything else is our fault, not the upload's: report it so the request doesn't hang,
        # and let the message be acknowledged (a retry would fail the same way). The text goes
        # to the history row for the admin; the client is told only that it was our fault.
        logger.exception("request %s (%s) failed", request_id, key)
        outcome = messages.refused(Outcome.FAILED, f"Recognition failed in the worker: {error!r}")
    result = outcome.stamped(
        request_id=request_id, instance=instance_id(), started=started, finished=time.time()
    )
    try:
        deliver(key, result)
    except Exception as error:
        logger.exception("request %s (%s): could not deliver its result", request_id, key)
        # Not acknowledged: with acks_late a task that raises is acknowledged (deleted), and
        # the request would wait for nothing. Rejected without requeue, kombu leaves the
        # message to SQS (the queue has a redrive policy), which delivers it again after the
        # visibility timeout and dead-letters it after FACESITE_MAX_RECEIVES deliveries.
        # (requeue=True would publish a copy whose receive count starts again.)
        raise Reject(f"could not deliver the result: {error!r}", requeue=False) from error
    logger.info(
        "request %s %s -> %s %s (%.0f ms, engine %.0f ms)",
        request_id,
        key,
        outcome.outcome,
        outcome.name or outcome.error,
        (time.time() - started) * 1000,
        engine_seconds * 1000,
    )


def deliver(key: str, result: messages.ResultMessage) -> None:
    """Store a recognised name in the output bucket, then send the result; each retried."""
    attempts = settings.FACESITE_DELIVERY_ATTEMPTS
    pauses = (DELIVERY_FIRST_PAUSE_SECONDS, DELIVERY_MAX_PAUSE_SECONDS)
    if result.outcome == Outcome.RECOGNISED:
        retried(
            lambda: aws.client("s3").put_object(
                Bucket=aws.names().output_bucket, Key=file_stem(key), Body=result.name.encode()
            ),
            f"storing the output of request {result.request_id}",
            attempts,
            *pauses,
        )
    retried(
        lambda: messages.send(result),
        f"sending the result of request {result.request_id}",
        attempts,
        *pauses,
    )


def recognize_object(
    key: str, version: str, gallery_version: str
) -> tuple[messages.ResultMessage, float]:
    """Fetch one stored upload and name the largest face in it; also the engine's seconds."""
    from recognition.engine import get_engine

    s3 = aws.client("s3")
    extra = {"VersionId": version} if version else {}
    data = s3.get_object(Bucket=aws.names().input_bucket, Key=key, **extra)["Body"].read()
    engine = get_engine()
    gallery = snapshots.load(gallery_version, engine.embedder_name)
    recognition = engine.recognize(data, gallery)
    engine_seconds = recognition.timings["total"]
    if not recognition.has_face:
        return messages.refused(Outcome.NO_FACE, f"No face was found in {key}.", faces=0), (
            engine_seconds
        )
    outcome = messages.recognised(
        name=recognition.name, distance=recognition.distance, faces=len(recognition.faces)
    )
    return outcome, engine_seconds
