"""The issue's acceptance criteria, with the real engine, through the evaluate command in-process.

Not marked django_db: evaluation enrols into a scratch gallery and must not touch the database.
"""

import json
import shutil
from io import StringIO
from pathlib import Path

from django.core.management import call_command

from .conftest import course_labels, course_photo


def evaluate(*args: str) -> dict:
    stdout = StringIO()
    call_command("evaluate", *args, "--json", "-v", "0", stdout=stdout, stderr=StringIO())
    return json.loads(stdout.getvalue())


def test_five_celebrity_validation_accuracy(engine, five_celebrity_dir: Path):
    report = evaluate(
        "--gallery", str(five_celebrity_dir / "train"), "--probes", str(five_celebrity_dir / "val")
    )
    assert report["probes"] == 24
    assert report["gallery"]["identities"] == 5
    assert report["accuracy"] >= 0.95, report["mistakes"]


def test_course_ten_photos_recognise_all_thousand(engine, course_dir: Path, tmp_path: Path):
    # Enrol the ten distinct photos (test_00..test_09), each under its label from labels_100.
    labels = course_labels(course_dir, "labels_100.csv")
    gallery = tmp_path / "gallery"
    for index in range(10):
        stem = f"test_{index:02d}"
        (gallery / labels[stem]).mkdir(parents=True, exist_ok=True)
        shutil.copy(course_photo(course_dir, stem), gallery / labels[stem])

    report = evaluate(
        "--gallery",
        str(gallery),
        "--probes",
        str(course_dir / "face_images_1000"),
        "--labels",
        str(course_dir / "labels_1000.csv"),
    )
    assert report["gallery"]["samples"] == 10 and report["gallery"]["skipped"] == []
    assert report["probes"] == 1000 and report["probes_skipped"] == []
    assert report["correct"] == 1000, report["mistakes"]
