"""The Engine API: faces, recognition against a gallery, configuration, the vggface2 embedder."""

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

import recognition.engine as engine_package
from facesite.config import ConfigError
from facesite.config import load as load_config
from recognition.engine import (
    DLIB_EMBEDDER,
    VGGFACE2_EMBEDDER,
    CorruptImage,
    EmbedderUnavailable,
    Face,
    FaceResult,
    NotAnImage,
    Recognition,
    configured_embedder_name,
    core,
    get_engine,
    load_engine,
)
from recognition.engine.embedders import VGGFACE2_WEIGHTS_FILE
from recognition.gallery.matching import UNKNOWN, Gallery


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gallery_without_madonna(celebrity_training_rows, dlib_engine) -> Gallery:
    rows = [(person, emb) for person, emb in celebrity_training_rows if person != "madonna"]
    return Gallery(dlib_engine.embedder_name, [p for p, _ in rows], np.stack([e for _, e in rows]))


@pytest.fixture(scope="module")
def validation_results(dlib_engine, gallery_without_madonna, five_celebrity_dir: Path):
    """(person, Recognition) for every five_celebrity validation photo."""
    return [
        (path.parent.name, dlib_engine.recognize(path.read_bytes(), gallery_without_madonna))
        for path in sorted((five_celebrity_dir / "val").glob("*/*"))
    ]


def test_get_engine_is_one_engine_per_process(engine) -> None:
    assert get_engine() is engine is get_engine()
    assert engine.embedder_name == configured_embedder_name()


def test_faces_are_immutable_and_typed(dlib_engine, single_face_photo: Path) -> None:
    (face,) = dlib_engine.embed_image(single_face_photo)
    assert isinstance(face, Face)
    assert face.embedding.dtype == np.float32 and face.embedding.shape == (128,)
    assert face.landmarks.shape == (5, 2)
    assert len(face.box) == 4 and all(isinstance(v, float) for v in face.box)
    x1, y1, x2, y2 = face.box
    assert face.area == pytest.approx((x2 - x1) * (y2 - y1))
    # eyes above the nose above the mouth, left eye on the left
    (lx, ly), (rx, ry), (_, ny), (_, my1), (_, my2) = face.landmarks
    assert lx < rx and max(ly, ry) < ny < min(my1, my2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.probability = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        face.embedding[0] = 1.0


def test_same_person_is_closer_than_different_people(
    celebrity_training_rows, validation_results
) -> None:
    rows = celebrity_training_rows + [
        (person, result.faces[0].face.embedding)
        for person, result in validation_results
        if result.has_face
    ]
    assert len(rows) == len(celebrity_training_rows) + 24  # a face in every validation photo
    people = np.array([person for person, _ in rows])
    vectors = np.stack([embedding for _, embedding in rows])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    same = people[:, None] == people[None]
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    intra, inter = distances[same & off_diagonal], distances[~same]
    assert intra.mean() + 0.2 < inter.mean()
    assert np.median(intra) < 0.6 < np.percentile(inter, 5)  # dlib's threshold separates them


def test_recognize_known_and_unknown(validation_results) -> None:
    right = unknown = 0
    for person, result in validation_results:
        assert isinstance(result, Recognition) and result.has_face
        if person == "madonna":  # not enrolled
            unknown += result.name == UNKNOWN
        else:
            right += result.name == person
    assert right >= 18  # of 19
    assert unknown >= 4  # of 5


def test_recognition_reports_every_face(
    dlib_engine, gallery_without_madonna, two_face_photo
) -> None:
    result = dlib_engine.recognize(two_face_photo, gallery_without_madonna, top_k=2)
    assert len(result.faces) == 2 and all(isinstance(r, FaceResult) for r in result.faces)
    assert result.faces[0].face.area >= result.faces[1].face.area
    assert result.name == result.faces[0].match.name
    assert result.distance == result.faces[0].match.distance
    assert all(len(r.match.candidates) == 2 for r in result.faces)
    assert set(result.timings) == {
        "decode",
        "detect",
        "align",
        "embed",
        "match",
        "second_look",
        "total",
    }
    parts = sum(seconds for step, seconds in result.timings.items() if step != "total")
    assert 0 < parts <= result.timings["total"]


def test_second_look_mirrors_only_faces_near_the_operating_point(
    dlib_engine, gallery_without_madonna, single_face_photo
) -> None:
    plain = dlib_engine.faces(Image.open(single_face_photo))[0].embedding
    mirrored = dlib_engine.faces(Image.open(single_face_photo), mirror=True)[0].embedding
    assert np.linalg.norm(plain - mirrored) > 0.01  # else the test could not tell them apart
    score = gallery_without_madonna.identify(plain)[0].score
    below, above = dlib_engine.second_look_band
    assert below > 0 and above > 0

    # Just inside the band, on the reject side: embedded again with the mirror image.
    doubtful = gallery_without_madonna.with_threshold(score + 0.9 * below)
    result = dlib_engine.recognize(single_face_photo, doubtful)
    face, match = result.faces[0].face, result.faces[0].match
    np.testing.assert_allclose(face.embedding, mirrored, atol=1e-5)
    assert match.score == pytest.approx(doubtful.identify(mirrored)[0].score, abs=1e-6)
    assert match.score != pytest.approx(score, abs=1e-4)
    assert result.timings["second_look"] > 0

    # Beyond the band either way: the first embedding and answer stand, no extra work.
    for threshold in (score + 1.1 * below, score - 1.1 * above):
        confident = gallery_without_madonna.with_threshold(threshold)
        result = dlib_engine.recognize(single_face_photo, confident)
        np.testing.assert_array_equal(result.faces[0].face.embedding, plain)
        assert result.faces[0].match.score == pytest.approx(score, abs=1e-6)
        assert result.timings["second_look"] == 0.0

    # Band 0 turns it off; the older distance rule never takes a second look.
    for engine in (
        core.Engine(dlib_engine.detector, dlib_engine.embedder, second_look_band=(0.0, 0.0)),
        core.Engine(dlib_engine.detector, dlib_engine.embedder, threshold=0.6),
    ):
        result = engine.recognize(single_face_photo, doubtful)
        np.testing.assert_array_equal(result.faces[0].face.embedding, plain)
    with pytest.raises(ValueError, match="second-look band"):
        core.Engine(dlib_engine.detector, dlib_engine.embedder, second_opinion_band=(0.1, -0.1))


def test_every_source_kind_gives_the_same_answer(
    dlib_engine, gallery_without_madonna, single_face_photo
) -> None:
    answers = {
        (r.name, round(r.distance, 5))
        for r in (
            dlib_engine.recognize(single_face_photo.read_bytes(), gallery_without_madonna),
            dlib_engine.recognize(single_face_photo, gallery_without_madonna),
            dlib_engine.recognize(str(single_face_photo), gallery_without_madonna),
            dlib_engine.recognize(Image.open(single_face_photo), gallery_without_madonna),
        )
    }
    assert len(answers) == 1
    assert next(iter(answers))[0] == "ben_afflek"


def test_no_face_and_bad_images(dlib_engine, gallery_without_madonna) -> None:
    blank = dlib_engine.recognize(
        jpeg(Image.new("RGB", (200, 200), (90, 90, 90))), gallery_without_madonna
    )
    assert not blank.has_face and blank.faces == []
    assert blank.name is None and blank.distance is None
    assert "total" in blank.timings
    with pytest.raises(NotAnImage):
        dlib_engine.recognize(b"not an image", gallery_without_madonna)
    with pytest.raises(CorruptImage):
        dlib_engine.embed_image(jpeg(Image.new("RGB", (200, 200)))[:300])


def test_exif_rotated_photo_gives_the_upright_result(dlib_engine, single_face_photo) -> None:
    upright = Image.open(single_face_photo).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 degrees clockwise to display"
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    # Full-resolution chroma (4:4:4), so that both files carry the same detail whichever way
    # up they were encoded; the remaining difference is JPEG noise.
    (expected,) = dlib_engine.embed_image(jpeg(upright, subsampling=0))
    (rotated,) = dlib_engine.embed_image(jpeg(sideways, subsampling=0, exif=exif.tobytes()))
    width = expected.box[2] - expected.box[0]
    assert np.allclose(rotated.box, expected.box, atol=0.03 * width)
    assert np.linalg.norm(rotated.embedding - expected.embedding) < 0.1
    # Without the tag the face lies on its side: no longer found, so the tag did the work.
    assert dlib_engine.embed_image(jpeg(sideways, subsampling=0)) == []


def test_a_gallery_of_another_embedder_is_refused(dlib_engine, single_face_photo) -> None:
    other = Gallery(VGGFACE2_EMBEDDER, ["someone"], np.zeros((1, 512), dtype=np.float32))
    with pytest.raises(ValueError, match=VGGFACE2_EMBEDDER):
        dlib_engine.recognize(single_face_photo, other)


def test_empty_gallery_answers_unknown(dlib_engine, single_face_photo) -> None:
    result = dlib_engine.recognize(single_face_photo, Gallery.empty(DLIB_EMBEDDER))
    assert result.has_face and result.name == UNKNOWN


def test_settings_reach_the_engine(settings, monkeypatch) -> None:
    built = {}
    monkeypatch.setattr(
        core, "load_engine", lambda embedder, **knobs: built.update(knobs, embedder=embedder)
    )
    settings.FACESITE_EMBEDDER = "vggface2"
    settings.FACESITE_MATCH_THRESHOLD = 0.45
    settings.FACESITE_TOP_K = 5
    settings.FACESITE_ENGINE_THREADS = 1
    settings.FACESITE_MAX_PIXELS = 1000
    settings.FACESITE_DETECT_MAX_SIDE = 640
    core._engine_from_settings()
    assert built == {
        "embedder": "vggface2",
        "threshold": 0.45,
        "top_k": 5,
        "threads": 1,
        "max_pixels": 1000,
        "detect_max_side": 640,
    }
    settings.FACESITE_MATCH_THRESHOLD = None
    core._engine_from_settings()
    assert built["threshold"] is None


def test_the_threshold_setting_is_parsed_at_start_up(monkeypatch) -> None:
    monkeypatch.setenv("FACESITE_MATCH_THRESHOLD", " 0.45 ")
    assert load_config().match_threshold == 0.45
    monkeypatch.setenv("FACESITE_MATCH_THRESHOLD", "")
    assert load_config().match_threshold is None
    monkeypatch.setenv("FACESITE_MATCH_THRESHOLD", "close")
    with pytest.raises(ConfigError, match="FACESITE_MATCH_THRESHOLD"):
        load_config()


def test_bad_settings_are_reported(settings) -> None:
    settings.FACESITE_EMBEDDER = "opencv"
    with pytest.raises(ImproperlyConfigured, match="'dlib', 'vggface2'"):
        core._engine_from_settings()
    with pytest.raises(ValueError):
        configured_embedder_name()


def test_load_engine_knobs() -> None:
    before = torch.get_num_threads()
    try:
        custom = load_engine("dlib", threshold=0.5, top_k=7, threads=1)
        assert torch.get_num_threads() == 1
        assert (custom.threshold, custom.top_k) == (0.5, 7)
    finally:
        torch.set_num_threads(before)
    default = load_engine("dlib")
    assert torch.get_num_threads() == before  # threads=0 leaves torch's own setting
    # No distance threshold: answers follow the gallery's calibrated operating point.
    assert (default.threshold, default.top_k) == (None, 3)


FORK_SCRIPT = """
import os, sys
from PIL import Image
from recognition.engine import load_engine

def child_finds_the_face():
    pid = os.fork()
    if pid == 0:
        os._exit(0 if len(engine.faces(image)) == 1 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0

engine = load_engine(threads=2)
image = Image.open(sys.argv[1]).convert("RGB")
assert child_finds_the_face(), "child of a parent that only loaded"
assert len(engine.faces(image)) == 1  # the parent now runs two-thread inference
assert child_finds_the_face(), "child of a parent that ran inference"
"""


def test_forked_workers_run(distinct_course_photos) -> None:
    """Workers are forked from a parent that loaded (and maybe used) the engine: children must
    detect and embed, not deadlock in OpenMP, which does not survive fork()."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-c", FORK_SCRIPT, str(distinct_course_photos[0])]
    completed = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_vggface2_without_weights_is_unavailable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from facenet_pytorch.models import inception_resnet_v1

    def no_downloads(*args, **kwargs):
        raise AssertionError("the engine tried to download weights")

    monkeypatch.setattr(inception_resnet_v1, "download_url_to_file", no_downloads)
    with pytest.raises(
        EmbedderUnavailable, match=str(tmp_path / "checkpoints" / VGGFACE2_WEIGHTS_FILE)
    ):
        load_engine("vggface2")
    assert list(tmp_path.iterdir()) == []  # nothing created either


def test_vggface2_with_a_checkpoint(tmp_path: Path, monkeypatch, single_face_photo: Path) -> None:
    """The vggface2 plumbing, with a randomly initialised network saved in the checkpoint's
    format (classifier included): 512-d unit vectors from 160x160 MTCNN-box crops."""
    from facenet_pytorch import InceptionResnetV1

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.manual_seed(0)
    network = InceptionResnetV1(classify=True, num_classes=8631)
    torch.save(network.state_dict(), checkpoints / VGGFACE2_WEIGHTS_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    engine = load_engine("vggface2")
    assert engine.embedder_name == VGGFACE2_EMBEDDER and engine.threshold == 1.0
    (face,) = engine.embed_image(single_face_photo)
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-4)

    (checkpoints / VGGFACE2_WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(EmbedderUnavailable, match="not a usable vggface2 checkpoint"):
        load_engine("vggface2")


def test_importing_the_package_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, recognition.engine; print('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert set(engine_package.__all__) >= {"Engine", "get_engine", "load_engine"}


def test_boxes_of_a_photo_decoded_smaller_are_in_the_originals_pixels(
    dlib_engine, single_face_photo
) -> None:
    from PIL import Image

    from recognition.engine.imaging import DECODE_MAX_SIDE

    with Image.open(single_face_photo) as photo:
        photo = photo.convert("RGB")
    factor = 2 * DECODE_MAX_SIDE / max(photo.size) + 0.5  # well past the reduced-decode size
    large = photo.resize((round(photo.width * factor), round(photo.height * factor)))
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=92)
    [small_face] = dlib_engine.embed_image(single_face_photo)[:1]
    [large_face] = dlib_engine.embed_image(buffer.getvalue())[:1]
    width = small_face.box[2] - small_face.box[0]
    for small, big in zip(small_face.box, large_face.box, strict=True):
        assert abs(big / factor - small) < 0.08 * width
    assert np.allclose(large_face.landmarks / factor, small_face.landmarks, atol=0.08 * width)
