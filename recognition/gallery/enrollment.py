"""Enrolment shared by ``enroll`` (into the database) and ``evaluate`` (into a scratch gallery).

Layout: one sub-folder of DIR per identity, the folder name is the label, images anywhere below
it. Every non-hidden file is tried: the engine decides what is an image from its content (the
datasets hold a PNG named .jpg), and whatever it cannot read is reported, not silently dropped.
The course layout (a flat folder plus a ``Image,Results`` CSV keyed by file stem) is read by
``images_from_labels_csv`` for probes.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from recognition.engine import ImageError, first_look_dim
from recognition.gallery.matching import Gallery, choose_face
from recognition.gallery.store import NewSample

if TYPE_CHECKING:  # the engine's module imports torch; only its type is needed here
    from recognition.engine import Engine


class EnrolmentError(Exception):
    """The input as a whole is unusable (missing folder, nothing to enrol)."""


@dataclass(frozen=True)
class LabelledImage:
    label: str
    path: Path
    source: str  # path relative to the enrolment folder, "/"-separated: "<label>/<file>"


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


@dataclass
class EmbeddingRun:
    """What came out of embedding a set of labelled images."""

    samples: list[NewSample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # source -> number of faces found, for images with several faces
    several_faces: dict[str, int] = field(default_factory=dict)
    # source -> which face was used and why, for the same images
    face_choices: dict[str, str] = field(default_factory=dict)

    def gallery(self, embedder: str) -> Gallery:
        """A scratch in-memory gallery of these samples (nothing is written anywhere)."""
        if not self.samples:
            return Gallery.empty(embedder)
        return Gallery(
            embedder,
            [sample.label for sample in self.samples],
            np.vstack([sample.embedding for sample in self.samples]),
        )


def _visible_files(folder: Path) -> list[Path]:
    """Files below ``folder``, sorted, skipping hidden files and folders (.DS_Store, .git)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def images_by_folder(root: Path) -> tuple[list[LabelledImage], list[Skipped]]:
    """The images of an identity-per-folder tree, and the stray files directly in ``root``."""
    if not root.is_dir():
        raise EnrolmentError(f"{root} is not a directory")
    images, strays = [], []
    for path in _visible_files(root):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            strays.append(Skipped(relative.as_posix(), "not inside an identity folder"))
        else:
            images.append(LabelledImage(relative.parts[0], path, relative.as_posix()))
    if not images:
        raise EnrolmentError(f"{root} has no images in identity sub-folders (DIR/<label>/<image>)")
    return images, strays


def images_from_labels_csv(
    folder: Path, labels_csv: Path
) -> tuple[list[LabelledImage], list[Skipped]]:
    """The course layout: images directly in ``folder``, labels in a CSV ``Image,Results`` where
    Image is the file stem. Files the CSV does not label are returned as skipped."""
    if not folder.is_dir():
        raise EnrolmentError(f"{folder} is not a directory")
    try:
        with labels_csv.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise EnrolmentError(f"cannot read {labels_csv}: {exc.strerror or exc}") from exc
    if not rows or not {"Image", "Results"} <= rows[0].keys():
        raise EnrolmentError(f"{labels_csv} needs an 'Image,Results' header and at least one row")
    labels = {row["Image"].strip(): row["Results"].strip() for row in rows}

    images, unlabelled = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        label = labels.get(path.stem)
        if label:
            images.append(LabelledImage(label, path, path.name))
        else:
            unlabelled.append(Skipped(path.name, f"no label in {labels_csv.name}"))
    if not images:
        raise EnrolmentError(f"no file in {folder} is labelled by {labels_csv}")
    return images, unlabelled


def labelled_images(
    folder: Path, labels_csv: Path | None = None
) -> tuple[list[LabelledImage], list[Skipped]]:
    """Folder-per-identity layout, or the course's flat layout when a labels CSV is given."""
    if labels_csv is None:
        return images_by_folder(folder)
    return images_from_labels_csv(folder, labels_csv)


def embed_images(
    engine: Engine,
    images: Iterable[LabelledImage],
    show_progress: bool = True,
    known: dict[str, np.ndarray] | None = None,
) -> EmbeddingRun:
    """Embed one face of each image; unreadable and face-less images are skipped.

    A photo with several faces enrols the face that agrees with the person's other examples:
    the single-face photos of this run plus ``known`` (label -> (n, dim) embeddings already
    enrolled); the largest when nothing else decides (see choose_face).
    """
    run = EmbeddingRun()
    images = list(images)
    found: list[tuple[LabelledImage, np.ndarray]] = []
    for image in tqdm(
        images, desc="embedding", unit="img", file=sys.stderr, disable=not show_progress
    ):
        try:
            # Mirror-averaged: a steadier example of the person (worth ~1 point of TPIR on
            # lfw_dev); enrolment, unlike recognition, can afford the second pass.
            faces = engine.embed_image(image.path, mirror=True)
        except ImageError as exc:
            run.skipped.append(Skipped(image.source, exc.message))
            continue
        except OSError as exc:  # vanished or unreadable file: report it, enrol the rest
            run.skipped.append(Skipped(image.source, f"cannot read: {exc.strerror or exc}"))
            continue
        if not faces:
            run.skipped.append(Skipped(image.source, "no face found"))
            continue
        found.append((image, np.stack([face.embedding for face in faces])))

    # The person's other examples: what is already enrolled plus this run's one-face photos.
    examples: dict[str, list[np.ndarray]] = {
        label: list(np.atleast_2d(rows)) for label, rows in (known or {}).items()
    }
    for image, embeddings in found:
        if len(embeddings) == 1:
            examples.setdefault(image.label, []).append(embeddings[0])
    for image, embeddings in found:
        chosen = 0
        if len(embeddings) > 1:
            others = examples.get(image.label)
            reference = np.mean(others, axis=0) if others else None
            chosen, why = choose_face(embeddings, reference, first_look_dim(engine.embedder_name))
            run.several_faces[image.source] = len(embeddings)
            run.face_choices[image.source] = why
        run.samples.append(NewSample(image.label, image.source, embeddings[chosen]))
    return run
