"""``manage.py importgallery PATH``: import the course's ``data.pt`` gallery as FaceSample rows.

``data.pt`` is ``[list of (1, 512) tensors, list of names]`` made by facenet-pytorch's
InceptionResnetV1(pretrained='vggface2'); its samples are only comparable with faces embedded by
that same network, so they are stored under the vggface2 engine's embedder name.
"""

import pickle
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError, CommandParser

from recognition.engine import VGGFACE2_EMBEDDER
from recognition.gallery import store

EMBEDDING_DIM = 512


def read_course_gallery(path: Path) -> tuple[list[str], np.ndarray]:
    """Names and a (n, 512) float32 matrix from a course ``data.pt``; ValueError if malformed."""
    import torch  # imported on use: loading torch takes seconds

    try:
        # weights_only: the file holds tensors, lists and strings, so no pickle code runs.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ValueError(f"cannot load {path}: {exc.strerror or exc}") from exc
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # Not torch.save output, or one holding objects that weights_only refuses to rebuild.
        raise ValueError(
            f"cannot load {path}: not a torch file holding only tensors and names"
        ) from exc
    if not (isinstance(data, (list, tuple)) and len(data) == 2):
        raise ValueError(f"{path} is not [embeddings, names]")
    tensors, names = data
    if len(tensors) != len(names) or not tensors:
        raise ValueError(f"{path} has {len(tensors)} embeddings for {len(names)} names")
    if not all(isinstance(tensor, torch.Tensor) for tensor in tensors):
        raise ValueError(f"{path}: every embedding must be a tensor")
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"{path}: every name must be a non-empty string")
    matrix = np.vstack([t.detach().reshape(1, -1).numpy() for t in tensors])
    if matrix.shape[1] != EMBEDDING_DIM:
        raise ValueError(f"{path} holds {matrix.shape[1]}-d embeddings, vggface2 makes 512-d")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path} holds NaN or infinite embedding values")
    return list(names), matrix.astype(np.float32)


class Command(BaseCommand):
    help = (
        "Import the course's data.pt ([list of (1,512) tensors, list of names], facenet "
        "vggface2) as gallery samples of the vggface2 embedder, then publish its snapshot. "
        "Samples are keyed '<file name>#<index>', so re-importing updates them in place."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="the course's data.pt")
        parser.add_argument(
            "--replace",
            action="store_true",
            help="first delete the vggface2 samples of the identities in the file",
        )

    def handle(self, *args, path: Path, replace: bool, **options) -> None:
        try:
            names, matrix = read_course_gallery(path)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        samples = [
            store.NewSample(name, f"{path.name}#{index}", matrix[index])
            for index, name in enumerate(names)
        ]
        saved = store.save_samples(
            VGGFACE2_EMBEDDER, samples, replace_labels=set(names) if replace else ()
        )
        snapshot, gallery = store.publish_snapshot(VGGFACE2_EMBEDDER)
        self.stdout.write(
            f"{path}: {len(samples)} embeddings of {len(set(names))} identities; samples "
            f"{saved.added} added, {saved.updated} updated, {saved.unchanged} unchanged"
        )
        self.stdout.write(
            f"gallery {gallery.embedder}: {len(gallery.identities)} identities, "
            f"{len(gallery)} samples"
        )
        self.stdout.write(self.style.SUCCESS(f"snapshot version {snapshot.version}"))
