"""The app tier's one task: recognise the face in an uploaded image.

The message carries metadata only (the S3 key and version, the gallery version); the task id is
the upload's request id. Redelivery is harmless: the same inputs give the same outputs, the
output bucket is overwritten with the same value, and the web tier ignores a second result.
"""

import logging
import time

from celery import shared_task
from django.conf import settings

from facesite import aws
from recognition import results, snapshots
from recognition.engine import ImageError
from recognition.models import file_stem
from recognition.worker import instance_id, mark_busy, mark_idle

logger = logging.getLogger(__name__)

TASK_NAME = "recognition.tasks.recognize_upload"


@shared_task(name=TASK_NAME, bind=True)
def recognize_upload(task, key: str, version: str, gallery_version: str) -> None:
    request_id = task.request.id
    started = time.time()
    engine_seconds = 0.0
    mark_busy()
    try:
        outcome, engine_seconds = recognize_object(key, version, gallery_version)
    except ImageError as error:
        outcome = results.failure(error.message, status=error.status)
    except Exception as error:
        # Anything else is our fault, not the upload's: report it so the request doesn't hang,
        # and let the message be acknowledged (a retry would fail the same way).
        logger.exception("request %s (%s) failed", request_id, key)
        outcome = results.failure(f"Recognition failed: {error}", status=500)
    finally:
        mark_idle()
    if outcome.status == 200:
        aws.client("s3").put_object(
            Bucket=settings.OUTPUT_BUCKET, Key=file_stem(key), Body=outcome.name.encode()
        )
    results.send(
        outcome.stamped(
            request_id=request_id, instance=instance_id(), started=started, finished=time.time()
        )
    )
    logger.info(
        "request %s %s -> %s %s (%.0f ms, engine %.0f ms)",
        request_id,
        key,
        outcome.status,
        outcome.name or outcome.error,
        (time.time() - started) * 1000,
        engine_seconds * 1000,
    )


def recognize_object(key: str, version: str, gallery_version: str) -> tuple[results.Result, float]:
    """Fetch one stored upload and name the largest face in it; also the engine's seconds."""
    # Imported here, not at the top: the web tier imports this module to send the task, and
    # must not load torch for that.
    from recognition.engine import get_engine

    s3 = aws.client("s3")
    extra = {"VersionId": version} if version else {}
    data = s3.get_object(Bucket=settings.INPUT_BUCKET, Key=key, **extra)["Body"].read()
    engine = get_engine()
    gallery = snapshots.load(gallery_version, engine.embedder_name)
    recognition = engine.recognize(data, gallery)
    engine_seconds = recognition.timings["total"]
    if not recognition.has_face:
        return results.failure(f"No face was found in {key}.", 422, faces=0), engine_seconds
    outcome = results.success(
        name=recognition.name, distance=recognition.distance, faces=len(recognition.faces)
    )
    return outcome, engine_seconds
