"""The gallery in the database: FaceSample rows in, content-addressed GallerySnapshot rows out.

FaceSample rows are the source of truth that enrolment edits; a GallerySnapshot is the frozen
export of one embedder's samples (``Gallery.to_bytes``) that workers load. Its version is the
gallery's content hash, so publishing the same content twice yields the same row.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from recognition.engine import first_look_dim
from recognition.gallery.matching import DEFAULT_TARGET_FPIR, Gallery, disagreeing_examples
from recognition.models import FaceSample, GallerySnapshot, Identity


def target_fpir() -> float:
    """FACESITE_TARGET_FPIR: the share of strangers the service may name (false-positive
    identification rate) that each published gallery's operating point is calibrated for.
    A Django setting of that name wins over the environment variable; default 0.01."""
    raw = getattr(settings, "FACESITE_TARGET_FPIR", None)
    if raw is None:
        raw = os.environ.get("FACESITE_TARGET_FPIR", "")
    text = str(raw).strip()
    if not text:
        return DEFAULT_TARGET_FPIR
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise ImproperlyConfigured(
            f"FACESITE_TARGET_FPIR must be a number between 0 and 1 (e.g. 0.01), got {text!r}"
        )
    return value


@dataclass(frozen=True)
class NewSample:
    """An embedding ready to store: who it is, which image it came from."""

    label: str
    source: str
    embedding: np.ndarray


@dataclass(frozen=True)
class SaveResult:
    added: int
    updated: int
    unchanged: int
    removed: int


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype="<f4").reshape(-1).tobytes()


def embedding_from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4")


def save_samples(
    embedder: str, samples: Sequence[NewSample], replace_labels: Iterable[str] = ()
) -> SaveResult:
    """Insert or update one FaceSample per (embedder, source), in one transaction.

    ``replace_labels``: identities whose existing samples for this embedder are deleted first
    (``enroll --replace``). Samples of other embedders are left alone: they cannot be recomputed
    here, and each embedder's gallery is published separately.
    """
    with transaction.atomic():
        removed, _ = FaceSample.objects.filter(
            embedder=embedder, identity__name__in=list(replace_labels)
        ).delete()

        identities = {}
        for label in sorted({sample.label for sample in samples}):
            identities[label], _ = Identity.objects.get_or_create(name=label)
        existing = {
            row.source_image: row
            for row in FaceSample.objects.filter(
                embedder=embedder, source_image__in=[sample.source for sample in samples]
            )
        }

        to_create, to_update, unchanged = [], [], 0
        for sample in samples:
            data = embedding_to_bytes(sample.embedding)
            identity = identities[sample.label]
            row = existing.get(sample.source)
            if row is None:
                to_create.append(
                    FaceSample(
                        identity=identity,
                        embedder=embedder,
                        embedding=data,
                        source_image=sample.source,
                    )
                )
            elif bytes(row.embedding) != data or row.identity_id != identity.pk:
                row.embedding, row.identity = data, identity
                to_update.append(row)
            else:
                unchanged += 1
        FaceSample.objects.bulk_create(to_create)
        FaceSample.objects.bulk_update(to_update, ["embedding", "identity"])
    return SaveResult(len(to_create), len(to_update), unchanged, removed)


def gallery_from_samples(embedder: str) -> Gallery:
    """A Gallery of every FaceSample of this embedder, in a stable order (name, source)."""
    rows = (
        FaceSample.objects.filter(embedder=embedder)
        .order_by("identity__name", "source_image")
        .values_list("identity__name", "embedding")
    )
    labels, vectors = [], []
    for name, data in rows.iterator():
        labels.append(name)
        vectors.append(embedding_from_bytes(data))
    if not vectors:
        return Gallery.empty(embedder)
    return Gallery(embedder, labels, np.vstack(vectors))


def known_embeddings(embedder: str, labels: Iterable[str]) -> dict[str, np.ndarray]:
    """label -> (n, dim) embeddings already enrolled for these identities (enrolment uses them
    to tell which face of a group photo is the person)."""
    found: dict[str, list[np.ndarray]] = {}
    rows = FaceSample.objects.filter(
        embedder=embedder, identity__name__in=list(labels)
    ).values_list("identity__name", "embedding")
    for name, data in rows.iterator():
        found.setdefault(name, []).append(embedding_from_bytes(data))
    return {name: np.vstack(vectors) for name, vectors in found.items()}


def flag_disagreeing(embedder: str) -> list[FaceSample]:
    """Recompute FaceSample.disagrees for every sample of this embedder; the flagged rows."""
    rows = list(FaceSample.objects.filter(embedder=embedder).select_related("identity"))
    if not rows:
        return []
    flags = disagreeing_examples(
        [row.identity.name for row in rows],
        np.vstack([embedding_from_bytes(row.embedding) for row in rows]),
        first_look_dim(embedder),
    )
    changed = []
    for row, flag in zip(rows, flags, strict=True):
        if row.disagrees != bool(flag):
            row.disagrees = bool(flag)
            changed.append(row)
    FaceSample.objects.bulk_update(changed, ["disagrees"])
    return [row for row, flag in zip(rows, flags, strict=True) if flag]


def first_look_explained(gallery: Gallery) -> str | None:
    """For a gallery of two networks' embeddings, what the first look (the first network's
    part) is held against, and when the second opinion is asked; None for one network's."""
    dims = first_look_dim(gallery.embedder)
    if dims is None or not len(gallery):
        return None
    first = gallery.first_look(dims).operating_point.explain()
    if gallery.operating_point.method == "prior":
        return f"first look {first}; too few trials for a point on both networks: it decides alone"
    return f"first look {first}; doubtful faces are answered on both networks at the point above"


def publish_snapshot(embedder: str, fpir: float | None = None) -> tuple[GallerySnapshot, Gallery]:
    """Export the embedder's samples, with the operating point calibrated for ``fpir`` (default
    FACESITE_TARGET_FPIR), as the newest snapshot; idempotent for unchanged content.

    Publishing content that an older snapshot already holds (say, after ``enroll --replace`` put
    the gallery back the way it was) makes that row the latest again instead of duplicating it.
    """
    gallery = gallery_from_samples(embedder).calibrated(target_fpir() if fpir is None else fpir)
    if (dims := first_look_dim(embedder)) is not None:
        gallery.first_look(dims)  # calibrated here, once, and carried by the snapshot
    with transaction.atomic():
        snapshot, created = GallerySnapshot.objects.get_or_create(
            version=gallery.version,
            defaults={
                "embedder": embedder,
                "identities": len(gallery.identities),
                "samples": len(gallery),
                "data": gallery.to_bytes(),
            },
        )
        latest = latest_snapshot(embedder)
        if not created and latest is not None and latest.pk != snapshot.pk:
            snapshot.created_at = timezone.now()
            GallerySnapshot.objects.filter(pk=snapshot.pk).update(created_at=snapshot.created_at)
    return snapshot, gallery


def _newest_first(embedder: str) -> QuerySet[GallerySnapshot]:
    return GallerySnapshot.objects.filter(embedder=embedder).order_by("-created_at", "-pk")


def latest_snapshot(embedder: str) -> GallerySnapshot | None:
    return _newest_first(embedder).first()


def latest_snapshot_version(embedder: str) -> str | None:
    """The newest snapshot's version, without loading its data (the web tier asks per upload)."""
    return _newest_first(embedder).values_list("version", flat=True).first()


def snapshot_data(version: str) -> bytes:
    return bytes(GallerySnapshot.objects.values_list("data", flat=True).get(version=version))


def snapshot_gallery(snapshot: GallerySnapshot) -> Gallery:
    return Gallery.from_bytes(bytes(snapshot.data))


def current_gallery(embedder: str) -> Gallery:
    """The gallery workers serve: the latest snapshot's, or an empty one before any enrolment."""
    snapshot = latest_snapshot(embedder)
    return snapshot_gallery(snapshot) if snapshot is not None else Gallery.empty(embedder)
