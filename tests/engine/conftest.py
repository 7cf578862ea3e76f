"""Photos and engines shared by the engine tests. Models load once per session (``engine``
comes from tests/conftest.py); anything here that embeds photos is session-scoped too."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from recognition.engine import DLIB_EMBEDDER

# A single clear frontal face (about 75 px wide in a 200x300 photo).
SINGLE_FACE = Path("val/ben_afflek/httpcsvkmeuadecafjpg.jpg")
# Two people, both faces clearly visible.
TWO_FACES = Path("train/elton_john/httpssmediacacheakpinimgcomxfcfcbaeaeddabbjpg.jpg")


@pytest.fixture(scope="session")
def dlib_engine(engine):
    """An engine of dlib's network alone: the session engine's first look without its second
    opinion (the same loaded models), or a dlib engine when the session runs another."""
    from recognition.engine import Engine, load_engine

    if engine.embedder.name == DLIB_EMBEDDER:
        return Engine(engine.detector, engine.embedder)
    return load_engine("dlib")


@pytest.fixture(scope="session")
def single_face_photo(five_celebrity_dir: Path) -> Path:
    return five_celebrity_dir / SINGLE_FACE


@pytest.fixture(scope="session")
def two_face_photo(five_celebrity_dir: Path) -> Path:
    return five_celebrity_dir / TWO_FACES


@pytest.fixture(scope="session")
def distinct_course_photos(course_dir: Path) -> list[Path]:
    """The course set repeats ten photos byte for byte: one path per distinct photo."""
    seen: dict[str, Path] = {}
    for path in sorted((course_dir / "face_images_100").glob("*.jpg")):
        seen.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    return list(seen.values())


@pytest.fixture(scope="session")
def celebrity_training_rows(dlib_engine, five_celebrity_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(person, embedding of the largest face) for the first five training photos of each of
    the five people (a quarter of the set: enough for the tests, and it keeps them quick)."""
    rows = []
    for person_dir in sorted((five_celebrity_dir / "train").iterdir()):
        for path in sorted(person_dir.iterdir())[:5]:
            faces = dlib_engine.embed_image(path)
            if faces:
                rows.append((person_dir.name, faces[0].embedding))
    return rows
