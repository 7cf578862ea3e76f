"""Fixtures shared by every test area: dataset paths and one face-engine load per session."""

from pathlib import Path

import pytest

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
