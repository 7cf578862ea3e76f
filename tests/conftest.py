"""Fixtures shared by every test area: dataset paths and one face-engine load per session."""

import csv
import shutil
from pathlib import Path

import pytest

from ami.local.harness import MotoServer

REPO_DIR = Path(__file__).resolve().parent.parent
DATASETS_DIR = REPO_DIR.parent / "shared" / "datasets"
COURSE_DIR = DATASETS_DIR / "course"
FIVE_CELEBRITY_DIR = DATASETS_DIR / "five_celebrity"


@pytest.fixture(scope="session")
def course_dir() -> Path:
    if not COURSE_DIR.is_dir():
        pytest.fail(f"the course dataset is missing: {COURSE_DIR}")
    return COURSE_DIR


@pytest.fixture(scope="session")
def five_celebrity_dir() -> Path:
    if not FIVE_CELEBRITY_DIR.is_dir():
        pytest.fail(f"the five_celebrity dataset is missing: {FIVE_CELEBRITY_DIR}")
    return FIVE_CELEBRITY_DIR


@pytest.fixture(scope="session")
def engine():
    """The process-wide face engine, loaded once for the whole test session."""
    from recognition.engine import get_engine

    return get_engine()


def course_labels(course_dir: Path, set_name: str) -> dict[str, str]:
    """Image stem -> label, from the course's labels_<set>.csv."""
    with open(course_dir / f"labels_{set_name}.csv", newline="") as labels:
        return {row["Image"]: row["Results"] for row in csv.DictReader(labels)}


def make_course_gallery(course_dir: Path, gallery: Path) -> Path:
    """The ten distinct course photos (test_00..test_09), one folder per label, for `enroll`."""
    labels = course_labels(course_dir, "100")
    for index in range(10):
        stem = f"test_{index:02d}"
        folder = gallery / labels[stem]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(course_dir / "face_images_100" / f"{stem}.jpg", folder)
    return gallery


@pytest.fixture(scope="session")
def course_gallery_dir(course_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_course_gallery(course_dir, tmp_path_factory.mktemp("course-gallery"))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory):
    """One real moto server for every end-to-end test; stacks share it under their own prefix."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
