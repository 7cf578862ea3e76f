"""Fixtures shared by every test area: dataset paths and one face-engine load per session."""

from pathlib import Path

import pytest

from ami.local.harness import (
    COURSE_DIR,
    FIVE_CELEBRITY_DIR,
    MotoServer,
    make_course_gallery,
)


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


@pytest.fixture(scope="session")
def course_gallery_dir(course_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_course_gallery(course_dir, tmp_path_factory.mktemp("course-gallery"))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory):
    """One real moto server for every end-to-end test; stacks share it under their own prefix."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
