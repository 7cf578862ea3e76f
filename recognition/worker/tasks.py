"""The app tier's one task: recognise the face in an uploaded image.

The message carries metadata only (the S3 key and version, the gallery version); the task id is
the upload's request id. Redelivery is harmless: the same inputs give the same outputs, the
output bucket is overwritten with the same value, and the web tier ignores a second result.
"""

import logging
import time

from celery import shared_task

from facesite import aws
from recognition import messages
from recognition.engine.errors import ImageError
from recognition.gallery import snapshots
from recognition.lifecycle import Outcome, outcome_of
from recognition.messages import RECOGNIZE_UPLOAD
from recognition.models import file_stem
from recognition.worker.selfstop import instance_id

logger = logging.getLogger(__name__)


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
        # and let the message be acknowledged (a retry would fail the same way).
        logger.exception("request %s (%s) failed", request_id, key)
        outcome = messages.refused(Outcome.FAILED, f"Recognition failed: {error}")
    if outcome.outcome == Outcome.RECOGNISED:
        aws.client("s3").put_object(
            Bucket=aws.names().output_bucket, Key=file_stem(key), Body=outcome.name.encode()
        )
    messages.send(
        outcome.stamped(
            request_id=request_id, instance=instance_id(), started=started, finished=time.time()
        )
    )
    logger.info(
        "request %s %s -> %s %s (%.0f ms, engine %.0f ms)",
        request_id,
        key,
        outcome.outcome,
        outcome.name or outcome.error,
        (time.time() - started) * 1000,
        engine_seconds * 1000,
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
