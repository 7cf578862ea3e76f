"""Small enrolment trees built from the datasets, for the command tests."""

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image


def course_labels(course_dir: Path, csv_name: str) -> dict[str, str]:
    with (course_dir / csv_name).open(newline="") as handle:
        return {row["Image"]: row["Results"] for row in csv.DictReader(handle)}


def course_photo(course_dir: Path, stem: str) -> Path:
    return course_dir / "face_images_100" / f"{stem}.jpg"


def write_blank_image(path: Path) -> Path:
    """A featureless grey picture: a valid image in which no face can be found."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), (128, 128, 128)).save(path)
    return path


def write_group_photo(path: Path, large: Path, small: Path) -> Path:
    """Two people in one picture: ``large`` scaled up 2.5x beside ``small`` at its own size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(large) as big, Image.open(small) as little:
        big = big.convert("RGB").resize((big.width * 5 // 2, big.height * 5 // 2))
        canvas = Image.new("RGB", (big.width + little.width + 48, big.height + 32), (200, 200, 200))
        canvas.paste(big, (16, 16))
        canvas.paste(little.convert("RGB"), (big.width + 32, 16))
    canvas.save(path, quality=95)
    return path


@pytest.fixture
def course_tree(tmp_path: Path, course_dir: Path) -> Path:
    """DIR/<label>/... with the first five course photos, plus every awkward case enrolment meets:
    a nested folder, an image without a face, a text file, a group photo and a stray file."""
    labels = course_labels(course_dir, "labels_100.csv")
    root = tmp_path / "gallery"
    nested = {"test_04": "nested"}  # an image one level below its identity folder
    for stem in ("test_00", "test_01", "test_02", "test_03", "test_04"):
        target = root / labels[stem] / nested.get(stem, "") / f"{stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(course_photo(course_dir, stem), target)
    write_blank_image(root / labels["test_02"] / "blank.png")
    (root / labels["test_02"] / "notes.txt").write_text("not a photo\n")
    write_group_photo(
        root / "Group" / "group.jpg",
        large=course_photo(course_dir, "test_00"),
        small=course_photo(course_dir, "test_02"),
    )
    shutil.copy(course_photo(course_dir, "test_05"), root / "stray.jpg")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "ignored.jpg").write_text("hidden files are not enrolled\n")
    return root
