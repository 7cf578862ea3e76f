"""Subjects and their examples over HTTP: the web tier's side of gallery management.

Embedding an example is model work and runs on the app tier (an `embed` task per image); this
module chooses which face of the returned ones to enrol, stores the sample with
recognition.gallery.store and republishes the gallery snapshot before the call replies, so every
recognise/verify request sent afterwards names (and workers load) the new version.
"""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q

from recognition.api import calls
from recognition.api.errors import ApiError
from recognition.engine import configured_embedder_name, first_look_dim
from recognition.gallery import snapshots, store
from recognition.gallery.matching import choose_face
from recognition.lifecycle import TIMEOUT_CODE, ApiReply
from recognition.messages import send_api_embed
from recognition.models import FaceSample, Identity, UploadRequest

# A subject's name travels in the verify task (twice JSON-escaped); this bounds its share of
# the request queue's 1,024 bytes, as MAX_FILE_NAME_WIRE_BYTES does for course file names.
MAX_SUBJECT_WIRE_BYTES = 200
# Samples enrolled through the API are stored as "api/<request id>/<file name>": unique (the
# store keys samples by source), while the API shows the file name alone.
_API_SOURCE = re.compile(r"^api/[0-9a-f-]{36}/")


def clean_subject_name(raw: object) -> str:
    name = str(raw or "").strip()
    if not name:
        raise ApiError(400, "bad_request", "A subject needs a non-empty name.")
    if "/" in name or any(ord(char) < 32 for char in name):
        raise ApiError(400, "bad_request", "A subject name cannot contain '/' or control codes.")
    if len(json.dumps(json.dumps(name))) > MAX_SUBJECT_WIRE_BYTES:
        raise ApiError(400, "bad_request", "The subject name is too long.")
    return name


def subject_or_404(name: str) -> Identity:
    identity = Identity.objects.filter(name=name).first()
    if identity is None:
        raise ApiError(404, "not_found", f"There is no subject named {name!r}.")
    return identity


def _samples(identity: Identity):
    return FaceSample.objects.filter(identity=identity, embedder=configured_embedder_name())


def example_source(source_image: str) -> str:
    return _API_SOURCE.sub("", source_image)


def list_subjects() -> list[dict]:
    embedder = configured_embedder_name()
    rows = Identity.objects.annotate(
        examples=Count("samples", filter=Q(samples__embedder=embedder))
    ).order_by("name")
    return [{"name": row.name, "examples": row.examples} for row in rows]


def subject_detail(identity: Identity) -> dict:
    examples = _samples(identity).order_by("created_at", "pk")
    return {
        "name": identity.name,
        "examples": [
            {
                "id": sample.pk,
                "source": example_source(sample.source_image),
                "created_at": sample.created_at,
            }
            for sample in examples
        ],
    }


def publish_gallery() -> str:
    """Export the gallery as the newest snapshot and put it where workers fetch it."""
    snapshot, _ = store.publish_snapshot(configured_embedder_name())
    snapshots.publish(snapshot.version, bytes(snapshot.data))
    return snapshot.version


def create_subject(name: str) -> Identity:
    try:
        with transaction.atomic():
            return Identity.objects.create(name=name)
    except IntegrityError:
        raise ApiError(409, "conflict", f"A subject named {name!r} already exists.") from None


def rename_subject(identity: Identity, new_name: str) -> Identity:
    if new_name != identity.name:
        try:
            with transaction.atomic():
                Identity.objects.filter(pk=identity.pk).update(name=new_name)
        except IntegrityError:
            raise ApiError(
                409, "conflict", f"A subject named {new_name!r} already exists."
            ) from None
        identity.name = new_name
        publish_gallery()  # the samples' label changed
    return identity


def delete_subject(identity: Identity) -> None:
    identity.delete()  # and its samples
    publish_gallery()


def delete_example(identity: Identity, example_id: int) -> None:
    deleted, _ = FaceSample.objects.filter(identity=identity, pk=example_id).delete()
    if not deleted:
        raise ApiError(404, "not_found", f"Subject {identity.name!r} has no example {example_id}.")
    publish_gallery()


# --- adding examples ---------------------------------------------------------------------------


@dataclass
class Embedded:
    """One example image's faces (largest first) as the app tier embedded them."""

    image: calls.Image
    request_id: str
    boxes: list[list[float]]
    embeddings: np.ndarray  # (faces, dim)


def _decode(payload: dict) -> np.ndarray:
    return np.vstack(
        [
            np.frombuffer(base64.b64decode(face["embedding"]), dtype="<f4")
            for face in payload["faces"]
        ]
    )


def _embed(image: calls.Image) -> ApiReply:
    try:
        return calls.call(
            UploadRequest.Kind.EMBED,
            [image],
            lambda request_id, keys, gallery: send_api_embed(request_id, keys[0]),
        )
    finally:
        connection.close()  # this ran on a pool thread: its connection would be left open


def add_examples(identity: Identity, uploads: list) -> dict:
    """Embed each uploaded image on the app tier, enrol one face of each under ``identity``,
    republish the gallery; {"added": [...], "refused": [...]} in the order the images came."""
    embedder = configured_embedder_name()
    outcome: list[dict | None] = [None] * len(uploads)
    images: dict[int, calls.Image] = {}
    for index, upload in enumerate(uploads):
        try:
            images[index] = calls.read_image(upload)
        except ApiError as refusal:
            outcome[index] = {
                "source": calls.display_name(upload.name),
                "code": refusal.code,
                "message": refusal.message,
            }
    with ThreadPoolExecutor(max_workers=min(8, len(images)) or 1) as pool:
        replies = dict(zip(images, pool.map(_embed, images.values()), strict=True))

    embedded: dict[int, Embedded] = {}
    waiting = []
    for index, reply in replies.items():
        image = images[index]
        if reply.ok and reply.body.get("embedder") != embedder:
            outcome[index] = {
                "source": image.name,
                "code": "internal_error",
                "message": f"The worker embedded with {reply.body.get('embedder')}, "
                f"the gallery holds {embedder} embeddings.",
            }
        elif reply.ok:
            embedded[index] = Embedded(
                image,
                reply.request_id,
                [face["box"] for face in reply.body["faces"]],
                _decode(reply.body),
            )
        else:
            error = reply.body["error"]
            outcome[index] = {
                "source": image.name,
                "code": error["code"],
                "message": error["message"],
            }
            if error["code"] == TIMEOUT_CODE:
                waiting.append(reply.request_id)
    if waiting and not embedded and len(waiting) == len(images):
        raise ApiError(
            504,
            TIMEOUT_CODE,
            f"The examples are still being embedded (requests {', '.join(waiting)}); "
            "they were not added.",
            waiting[0],
        )

    references = [
        np.frombuffer(bytes(data), dtype="<f4")
        for data in _samples(identity).values_list("embedding", flat=True)
    ]
    # Single-face images first: their faces are references for the images with several.
    chosen: dict[int, tuple[int, str]] = {}
    dims = first_look_dim(embedder)
    for index in sorted(embedded, key=lambda i: len(embedded[i].embeddings)):
        faces = embedded[index].embeddings
        reference = np.mean(references, axis=0) if references else None
        face, note = choose_face(faces, reference, dims) if len(faces) > 1 else (0, "")
        chosen[index] = (face, note)
        references.append(embedded[index].embeddings[face])

    sources = {
        index: f"api/{item.request_id}/{item.image.name}"[:512] for index, item in embedded.items()
    }
    if embedded:
        store.save_samples(
            embedder,
            [
                store.NewSample(identity.name, sources[index], item.embeddings[chosen[index][0]])
                for index, item in embedded.items()
            ],
        )
        publish_gallery()
    ids = dict(
        FaceSample.objects.filter(embedder=embedder, source_image__in=sources.values()).values_list(
            "source_image", "pk"
        )
    )
    added = []
    for index, item in sorted(embedded.items()):
        face, note = chosen[index]
        added.append(
            {
                "id": ids[sources[index]],
                "source": item.image.name,
                "faces": len(item.embeddings),
                "note": note,
            }
        )
    return {"added": added, "refused": [entry for entry in outcome if entry is not None]}
