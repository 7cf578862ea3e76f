"""The app tier's tasks for the service API (/api/v1/): recognise, detect, verify and embed.

Like the course's task, each message carries metadata only (the S3 key, the gallery version);
the task id is the request id, and the answer goes back on the response queue, here with the
whole JSON result as the message's payload. All model work happens here, never on the web tier.
Redelivery is harmless: the same inputs give the same result, and the web tier ignores a second.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from celery import shared_task

from facesite import aws
from recognition import messages
from recognition.engine.errors import ImageError
from recognition.gallery import snapshots
from recognition.gallery.matching import AGREEMENT_DISTANCE, UNKNOWN, Gallery
from recognition.lifecycle import Outcome, outcome_of
from recognition.worker.selfstop import instance_id

if TYPE_CHECKING:
    from recognition.engine import Engine, Face

logger = logging.getLogger(__name__)


def _engine() -> Engine:
    from recognition.engine import get_engine  # torch: loaded by the worker process only

    return get_engine()


def _fetch(key: str) -> bytes:
    return aws.client("s3").get_object(Bucket=aws.names().input_bucket, Key=key)["Body"].read()


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an empty gallery's distance is reported as null."""
    return None if value is None or math.isinf(value) else round(float(value), 4)


def _box(face: Face) -> list[float]:
    return [round(value, 1) for value in face.box]


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {step: round(value * 1000, 1) for step, value in seconds.items()}


def _answer(task, kind: str, work: Callable[[], messages.ResultMessage]) -> None:
    """Run ``work`` and send its result; an unusable image or our own failure is a result too,
    so the waiting request never hangs."""
    request_id = task.request.id
    started = time.time()
    try:
        result = work()
    except ImageError as error:
        result = messages.refused(outcome_of(error), error.message)
    except Exception as error:
        logger.exception("API %s request %s failed", kind, request_id)
        result = messages.refused(Outcome.FAILED, f"The {kind} task failed: {error}")
    messages.send(
        result.stamped(
            request_id=request_id, instance=instance_id(), started=started, finished=time.time()
        )
    )
    logger.info(
        "API %s request %s -> %s (%.0f ms)",
        kind,
        request_id,
        result.outcome,
        (time.time() - started) * 1000,
    )


def _no_face(where: str = "the image") -> messages.ResultMessage:
    return messages.refused(Outcome.NO_FACE, f"No face was found in {where}.", faces=0)


@shared_task(name=messages.API_RECOGNIZE, bind=True)
def api_recognize(task, key: str, gallery_version: str, top_k: int) -> None:
    _answer(task, "recognize", lambda: recognize_payload(_fetch(key), gallery_version, top_k))


def recognize_payload(data: bytes, gallery_version: str, top_k: int) -> messages.ResultMessage:
    """Every face, largest first, with its name and per-subject candidates."""
    engine = _engine()
    gallery = snapshots.load(gallery_version, engine.embedder_name)
    recognition = engine.recognize(data, gallery, top_k=top_k)
    if not recognition.has_face:
        return _no_face()
    faces = [
        {
            "box": _box(result.face),
            "score": round(float(result.face.probability), 4),
            "name": result.match.name,
            "distance": _finite(result.match.distance),
            "candidates": [
                {"subject": candidate.name, "distance": _finite(candidate.distance)}
                for candidate in result.match.candidates
            ],
        }
        for result in recognition.faces
    ]
    payload = {
        "name": recognition.name,
        "faces": faces,
        "timings_ms": _ms(recognition.timings),
    }
    return messages.ResultMessage(
        Outcome.RECOGNISED,
        name=recognition.name or "",
        distance=_finite(recognition.distance),
        faces=len(faces),
        payload=payload,
    )


@shared_task(name=messages.API_DETECT, bind=True)
def api_detect(task, key: str) -> None:
    _answer(task, "detect", lambda: detect_payload(_fetch(key)))


def detect_payload(data: bytes) -> messages.ResultMessage:
    """Every face's box, detection score and five landmarks, largest first."""
    started = time.perf_counter()
    faces = _engine().embed_image(data)
    payload = {
        "faces": [
            {
                "box": _box(face),
                "score": round(float(face.probability), 4),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
            }
            for face in faces
        ],
        "timings_ms": {"total": round((time.perf_counter() - started) * 1000, 1)},
    }
    return messages.ResultMessage(Outcome.COMPLETED, faces=len(faces), payload=payload)


@shared_task(name=messages.API_VERIFY, bind=True)
def api_verify(task, key: str, other_key: str, subject: str, gallery_version: str) -> None:
    _answer(
        task,
        "verify",
        lambda: verify_payload(
            _fetch(key), _fetch(other_key) if other_key else None, subject, gallery_version
        ),
    )


def verify_payload(
    data: bytes, other: bytes | None, subject: str, gallery_version: str
) -> messages.ResultMessage:
    """Whether the largest face in ``data`` is the person in ``other`` (its largest face) or the
    enrolled ``subject``: a 1:1 decision, by distance (the nearest example), within the engine's
    distance threshold when one is set, else the distance at which two faces agree."""
    engine = _engine()
    threshold = AGREEMENT_DISTANCE if engine.threshold is None else engine.threshold
    # The distance is the first network's alone: the one the threshold is measured in.
    faces = engine.embed_image(data, fused=False)
    if not faces:
        return _no_face("the first image")
    probe = faces[0].embedding
    if other is not None:
        other_faces = engine.embed_image(other, fused=False)
        if not other_faces:
            return _no_face("the second image")
        # A one-sample gallery of the second face: the same rule decides as for recognition.
        reference = Gallery(engine.embedder_name, ["image2"], other_faces[0].embedding[None, :])
        match = reference.match(probe, threshold, top_k=1)[0]
        distance = match.distance
        matched = match.name != UNKNOWN
    else:
        gallery = snapshots.load(gallery_version, engine.embedder_name)
        gallery = gallery.first_look(engine.embedder.dim)
        # Every identity's distance, so the subject's is among them wherever it ranks.
        match = gallery.match(probe, threshold, top_k=max(1, len(gallery)))[0]
        distances = {candidate.name: candidate.distance for candidate in match.candidates}
        if subject not in distances:
            return messages.refused(
                Outcome.FAILED,
                f"Subject {subject!r} has no examples in gallery {gallery_version[:12]}.",
            )
        distance = distances[subject]
        matched = distance <= threshold
    payload = {
        "match": bool(matched),
        "distance": _finite(distance),
        "threshold": round(float(threshold), 4),
    }
    return messages.ResultMessage(
        Outcome.COMPLETED, distance=_finite(distance), faces=len(faces), payload=payload
    )


@shared_task(name=messages.API_EMBED, bind=True)
def api_embed(task, key: str) -> None:
    _answer(task, "embed", lambda: embed_payload(_fetch(key)))


def encode_embedding(embedding: np.ndarray) -> str:
    """float32 little-endian, base64: a third of the size of a JSON list of floats."""
    return base64.b64encode(np.asarray(embedding, dtype="<f4").tobytes()).decode("ascii")


def embed_payload(data: bytes) -> messages.ResultMessage:
    """Every face's box and embedding, largest first: the web tier picks which to enrol (it
    knows the subject's other examples) and stores it, without loading a model."""
    engine = _engine()
    faces = engine.embed_image(data)
    if not faces:
        return _no_face()
    payload = {
        "embedder": engine.embedder_name,
        "faces": [
            {"box": _box(face), "embedding": encode_embedding(face.embedding)} for face in faces
        ],
    }
    return messages.ResultMessage(Outcome.COMPLETED, faces=len(faces), payload=payload)
