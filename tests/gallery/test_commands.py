"""enroll, recognize, evaluate and importgallery with the real engine, on small trees."""

import json
import shutil
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from recognition.engine import VGGFACE2_EMBEDDER
from recognition.gallery import store
from recognition.gallery.matching import AGREEMENT_DISTANCE, UNKNOWN
from recognition.models import FaceSample, GallerySnapshot

from .conftest import course_photo, write_blank_image, write_group_photo

ENROLLED = {
    "Paul/test_00.jpg",
    "Emily/test_01.jpg",
    "Emily/nested/test_04.jpg",
    "Bob/test_02.jpg",
    "German/test_03.jpg",
    "Group/group.jpg",
}


def run(*args: str) -> tuple[str, str]:
    stdout, stderr = StringIO(), StringIO()
    call_command(*args, stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


@pytest.mark.django_db
def test_enroll_reports_every_case_is_idempotent_and_replaces(engine, course_tree: Path):
    out, _ = run("enroll", str(course_tree), "-v", "0")

    rows = FaceSample.objects.filter(embedder=engine.embedder_name)
    assert set(rows.values_list("source_image", flat=True)) == ENROLLED
    assert "6 added, 0 updated" in out
    assert "Bob/blank.png: no face found" in out
    assert "Bob/notes.txt: The file is not an image" in out
    assert "stray.jpg: not inside an identity folder" in out
    assert "Group/group.jpg: 2 faces, used the largest" in out
    assert ".hidden" not in out
    snapshot = store.latest_snapshot(engine.embedder_name)
    assert f"snapshot version {snapshot.version}" in out
    assert (snapshot.identities, snapshot.samples) == (5, 6)

    # The group photo's sample is its larger face: Paul, not Bob.
    # (Distances in dlib's units: the first network's part of each sample.)
    gallery = store.snapshot_gallery(snapshot).first_look(engine.embedder.dim)
    group = gallery.embeddings[gallery.labels.index("Group")]
    paul = gallery.embeddings[gallery.labels.index("Paul")]
    bob = gallery.embeddings[gallery.labels.index("Bob")]
    assert np.linalg.norm(group - paul) < AGREEMENT_DISTANCE < np.linalg.norm(group - bob)

    # Re-running updates in place. An image removed from DIR keeps its sample (enroll adds)...
    ids = set(rows.values_list("pk", flat=True))
    shutil.rmtree(course_tree / "Emily" / "nested")
    out, _ = run("enroll", str(course_tree), "-v", "0")
    assert "0 added, 0 updated, 5 unchanged" in out
    assert set(rows.values_list("pk", flat=True)) == ids
    # ...and the same photos give the same embeddings: the same snapshot, not a new one.
    assert GallerySnapshot.objects.count() == 1
    assert f"snapshot version {snapshot.version}" in out

    # ...unless --replace drops the identity's old samples first.
    out, _ = run("enroll", str(course_tree), "--replace", "-v", "0")
    assert "removed (--replace)" in out
    assert set(rows.values_list("source_image", flat=True)) == ENROLLED - {
        "Emily/nested/test_04.jpg"
    }
    assert store.latest_snapshot(engine.embedder_name).samples == 5


@pytest.mark.django_db
def test_enroll_refuses_a_missing_or_empty_dir(tmp_path: Path):
    with pytest.raises(CommandError, match="is not a directory"):
        run("enroll", str(tmp_path / "missing"))
    (tmp_path / "empty" / "Nobody").mkdir(parents=True)
    with pytest.raises(CommandError, match="no images in identity sub-folders"):
        run("enroll", str(tmp_path / "empty"))


@pytest.mark.django_db
def test_enroll_without_any_face_changes_nothing(engine, tmp_path: Path):
    write_blank_image(tmp_path / "tree" / "Nobody" / "blank.png")
    with pytest.raises(CommandError, match="no face enrolled"):
        run("enroll", str(tmp_path / "tree"), "-v", "0")
    assert not FaceSample.objects.exists() and not GallerySnapshot.objects.exists()


@pytest.mark.django_db
def test_recognize_prints_stem_and_name(
    engine, course_tree: Path, course_dir: Path, five_celebrity_dir: Path, tmp_path: Path
):
    run("enroll", str(course_tree), "-v", "0")
    stranger = sorted((five_celebrity_dir / "val" / "madonna").iterdir())[0]
    blank = write_blank_image(tmp_path / "blank.png")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    images = [course_photo(course_dir, "test_10"), stranger, blank, notes, tmp_path / "gone.jpg"]

    stdout, stderr = StringIO(), StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("recognize", *map(str, images), stdout=stdout, stderr=stderr)
    assert raised.value.returncode == 1
    assert "2 of 5 images could not be read" in str(raised.value)
    assert stdout.getvalue().splitlines() == [
        "test_10:Paul",
        f"{stranger.stem}:{UNKNOWN}",
        "blank:",
    ]
    errors = stderr.getvalue().splitlines()
    assert "blank: no face found" in errors
    assert any(line.startswith(f"{notes}: ") for line in errors)
    assert any(line.startswith(f"{tmp_path / 'gone.jpg'}: cannot read") for line in errors)

    out, _ = run("recognize", "--verbose", str(course_photo(course_dir, "test_12")))
    lines = out.splitlines()
    assert "test_12:Bob" in lines
    face_line = next(line for line in lines if line.startswith("  face 0:"))
    assert "-> Bob [Bob " in face_line
    assert face_line.count(",") >= 2  # three candidates (top_k) listed
    assert any(line.startswith("  timings:") and "ms" in line for line in lines)


@pytest.mark.django_db
def test_recognize_with_an_empty_gallery_says_so(engine, course_dir: Path):
    out, err = run("recognize", str(course_photo(course_dir, "test_00")))
    assert out.splitlines() == [f"test_00:{UNKNOWN}"]
    assert "gallery is empty" in err


# Not marked django_db: evaluate must not touch the database (pytest-django would fail it).
def test_evaluate_json(
    engine, course_tree: Path, course_dir: Path, five_celebrity_dir: Path, tmp_path
):
    probes = tmp_path / "probes"
    for label, stem in (("Paul", "test_10"), ("Bob", "test_12"), ("Emily", "test_14")):
        (probes / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(course_photo(course_dir, stem), probes / label)
    write_blank_image(probes / "Bob" / "blank.png")
    stranger = sorted((five_celebrity_dir / "val" / "madonna").iterdir())[0]
    (probes / "Madonna").mkdir()
    shutil.copy(stranger, probes / "Madonna")

    out, _ = run(
        "evaluate", "--gallery", str(course_tree), "--probes", str(probes), "--json", "-v", "0"
    )
    report = json.loads(out)
    assert report["embedder"] == engine.embedder_name
    assert report["gallery"]["identities"] == 5 and report["gallery"]["samples"] == 6
    assert {item["source"] for item in report["gallery"]["skipped"]} == {
        "Bob/blank.png",
        "Bob/notes.txt",
        "stray.jpg",
    }
    assert report["probes"] == 5
    assert report["correct"] == 4  # Madonna is not enrolled: Unknown is the right answer
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["no_face"] == 1
    assert report["per_identity"]["Bob"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert report["confusions"]["Bob"] == {"(no face)": 1, "Bob": 1}
    assert report["confusions"]["Madonna"] == {UNKNOWN: 1}
    assert report["mistakes"] == [{"true": "Bob", "predicted": "(no face)", "count": 1}]
    assert report["throughput_images_per_s"] > 0
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]


@pytest.mark.django_db
def test_importgallery_loads_the_course_gallery(course_dir: Path):
    out, _ = run("importgallery", str(course_dir / "data.pt"))
    assert "90 embeddings of 90 identities" in out
    snapshot = store.latest_snapshot(VGGFACE2_EMBEDDER)
    assert (snapshot.identities, snapshot.samples) == (90, 90)
    assert FaceSample.objects.filter(source_image="data.pt#0").exists()
    gallery = store.snapshot_gallery(snapshot)
    # Each stored embedding is nearest to itself: the rows kept their names.
    [match] = gallery.match(gallery.embeddings[:1], threshold=0.1)
    assert match.name == gallery.labels[0] and match.distance == 0.0

    out, _ = run("importgallery", str(course_dir / "data.pt"))
    assert "0 added, 0 updated, 90 unchanged" in out
    assert GallerySnapshot.objects.count() == 1


@pytest.mark.django_db
def test_importgallery_rejects_other_files(tmp_path: Path):
    bogus = tmp_path / "data.pt"
    bogus.write_bytes(b"not a torch file")
    with pytest.raises(CommandError, match="cannot load"):
        run("importgallery", str(bogus))


BEN_AFFLECK = (  # four one-face photos of him
    "httpcsvkmeuaeccjpg.jpg",
    "httpimagesfandangocomrImageRendererredesignstaticimgnoxportraitjpgpcpcpcimagesmaster"
    "repositoryperformerimagespjpg.jpg",
    "httpssmediacacheakpinimgcomxdbbdbbbececacdecdcdfjpg.jpg",
    "httpssmediacacheakpinimgcomxdfdfadcfeabjpg.jpg",
)
MADONNA = "httpiamediaimdbcomimagesMMVBMTANDQNTAxNDVeQTJeQWpwZBbWUMDIMjQOTYVUXCRALjpg.jpg"


@pytest.mark.django_db
def test_enroll_uses_the_face_that_agrees_and_flags_the_odd_example(
    engine, course_dir: Path, five_celebrity_dir: Path, tmp_path: Path
):
    tree = tmp_path / "tree"
    (tree / "Bob").mkdir(parents=True)
    shutil.copy(course_photo(course_dir, "test_02"), tree / "Bob")
    # Bob stands beside a larger Paul: the largest face is the wrong one.
    write_group_photo(
        tree / "Bob" / "group.jpg",
        large=course_photo(course_dir, "test_00"),
        small=course_photo(course_dir, "test_02"),
    )
    # Four photos of Ben Affleck and one of Madonna filed under Ben.
    ben = tree / "Ben"
    ben.mkdir()
    for name in BEN_AFFLECK:
        shutil.copy(five_celebrity_dir / "train" / "ben_afflek" / name, ben)
    shutil.copy(five_celebrity_dir / "train" / "madonna" / MADONNA, ben)

    out, _ = run("enroll", str(tree), "-v", "0")
    assert "Bob/group.jpg: 2 faces, used face 2 by size: it agrees" in out
    assert "1 examples disagree with the rest of their person" in out
    assert f"  Ben/{MADONNA} (Ben)" in out
    flagged = FaceSample.objects.filter(disagrees=True)
    assert list(flagged.values_list("source_image", flat=True)) == [f"Ben/{MADONNA}"]

    gallery = store.current_gallery(engine.embedder_name)
    samples = {
        row.source_image: np.frombuffer(bytes(row.embedding), dtype="<f4")
        for row in FaceSample.objects.all()
    }
    assert np.linalg.norm(samples["Bob/group.jpg"] - samples["Bob/test_02.jpg"]) < 0.3
    assert "operating point: threshold" in out
    assert gallery.operating_point.method == "prior"  # 7 impostor trials: too few for 1%


@pytest.mark.django_db
def test_calibrate_explains_and_publishes(engine, course_tree: Path):
    with pytest.raises(CommandError, match="empty"):
        run("calibrate")
    run("enroll", str(course_tree), "-v", "0")
    snapshots = GallerySnapshot.objects.count()
    out, _ = run("calibrate", "--dry-run")
    assert "target FPIR 0.01: threshold" in out and "impostor trials" in out
    two_networks = engine.second_opinion is not None
    # 6 examples: too few trials for 1%, so the prior, and the first look decides alone.
    assert ("first look threshold" in out and "it decides alone" in out) == two_networks
    assert GallerySnapshot.objects.count() == snapshots
    out, _ = run("calibrate", "--target-fpir", "0.2")
    assert "target FPIR 0.2: threshold" in out
    assert ("doubtful faces are answered on both networks" in out) == two_networks
    latest = store.current_gallery(engine.embedder_name)
    assert latest.operating_point.target_fpir == 0.2
    assert f"snapshot version {latest.version}" in out
    with pytest.raises(CommandError, match="between 0 and 1"):
        run("calibrate", "--target-fpir", "2")
