"""The default engine's second opinion: FaceNet's network, read from its Keras weights, and the
second look that matches doubtful faces on dlib's and FaceNet's embeddings side by side."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recognition.engine import FUSED_EMBEDDER, core, first_look_dim
from recognition.gallery.matching import Gallery


@pytest.fixture(scope="module")
def fused_engine(engine):
    if engine.second_opinion is None:
        pytest.skip(f"the session engine ({engine.embedder_name}) has no second opinion")
    return engine


@pytest.fixture(scope="module")
def facenet_rows(fused_engine, five_celebrity_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(person, FaceNet embedding of the largest face) for five training photos of each."""
    facenet = fused_engine.second_opinion
    rows = []
    for person_dir in sorted((five_celebrity_dir / "train").iterdir()):
        for path in sorted(person_dir.iterdir())[:5]:
            image = Image.open(path).convert("RGB")
            with torch.inference_mode():  # as the engine runs its detector
                detections = fused_engine.detector.detect(image)
            if detections:
                crop = facenet.prepare(image, detections[0])
                rows.append((person_dir.name, facenet.embed(crop[None])[0]))
    return rows


def test_facenet_weights_tell_people_apart(facenet_rows) -> None:
    """A layer read into the wrong module gives embeddings that say nothing about who it is."""
    people = np.array([person for person, _ in facenet_rows])
    embeddings = np.stack([embedding for _, embedding in facenet_rows])
    assert embeddings.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    same = people[:, None] == people[None]
    off_diagonal = ~np.eye(len(people), dtype=bool)
    assert distances[same & off_diagonal].mean() + 0.3 < distances[~same].mean()
    np.fill_diagonal(distances, np.inf)
    nearest_is_same = people[distances.argmin(axis=1)] == people
    assert nearest_is_same.mean() >= 0.9


@pytest.fixture(scope="module")
def fused_gallery(fused_engine, five_celebrity_dir: Path) -> Gallery:
    """Three training photos of each person but Madonna, enrolled as enroll does, with an
    operating point calibrated from its 12 impostor trials (a target of 0.2 needs only 5)."""
    labels, rows = [], []
    for person_dir in sorted((five_celebrity_dir / "train").iterdir()):
        if person_dir.name == "madonna":
            continue
        for path in sorted(person_dir.iterdir())[:3]:
            faces = fused_engine.embed_image(path, mirror=True)
            if faces:
                labels.append(person_dir.name)
                rows.append(faces[0].embedding)
    gallery = Gallery(fused_engine.embedder_name, labels, np.stack(rows)).calibrated(0.2)
    assert gallery.operating_point.method == "quantile"
    return gallery


def test_enrolment_embeds_with_both_networks(fused_engine, fused_gallery) -> None:
    assert fused_engine.embedder_name == FUSED_EMBEDDER
    dlib = fused_engine.embedder.dim
    assert first_look_dim(FUSED_EMBEDDER) == dlib  # names.py knows it without loading a model
    assert fused_gallery.dim == dlib + fused_engine.second_opinion.dim
    # Each part is a mirror-averaged unit vector of its network, the second scaled by its weight.
    second = np.linalg.norm(fused_gallery.embeddings[:, dlib:], axis=1)
    np.testing.assert_allclose(second, core.FUSION_WEIGHT, atol=1e-4)


def test_a_doubtful_face_is_matched_on_both_networks(
    fused_engine, fused_gallery, single_face_photo: Path
) -> None:
    dlib = fused_engine.embedder.dim
    image = Image.open(single_face_photo).convert("RGB")
    (plain,) = fused_engine.faces(image)
    (mirrored,) = fused_engine.faces(image, mirror=True)

    def engine_with(band: tuple[float, float]) -> core.Engine:
        return core.Engine(
            fused_engine.detector,
            fused_engine.embedder,
            second_look_band=band,
            second_opinion=fused_engine.second_opinion,
            second_opinion_band=band,
        )

    # Every face doubtful: dlib's part averaged with the mirror image, FaceNet's of the photo.
    result = engine_with((10.0, 10.0)).recognize(single_face_photo.read_bytes(), fused_gallery)
    face, match = result.faces[0].face, result.faces[0].match
    expected = np.concatenate([mirrored.embedding[:dlib], plain.embedding[dlib:]])
    np.testing.assert_allclose(face.embedding, expected, atol=1e-5)
    assert match == fused_gallery.identify(face.embedding)[0]
    assert match.threshold == fused_gallery.operating_point.threshold
    assert result.timings["second_look"] > 0

    # A gallery too small to calibrate has the prior, in dlib's units: dlib's part decides.
    small = Gallery(fused_gallery.embedder, fused_gallery.labels, fused_gallery.embeddings)
    assert small.operating_point.method == "prior"
    result = engine_with((10.0, 10.0)).recognize(single_face_photo.read_bytes(), small)
    face, match = result.faces[0].face, result.faces[0].match
    np.testing.assert_allclose(face.embedding, mirrored.embedding[:dlib], atol=1e-5)
    assert match == small.first_look(dlib).identify(face.embedding)[0]

    # None doubtful: the first look's answer, on dlib's part alone, at its own operating point.
    result = engine_with((0.0, 0.0)).recognize(single_face_photo.read_bytes(), fused_gallery)
    face, match = result.faces[0].face, result.faces[0].match
    np.testing.assert_allclose(face.embedding, plain.embedding[:dlib], atol=1e-5)
    first_look = fused_gallery.first_look(dlib)
    assert match == first_look.identify(face.embedding)[0]
    assert match.threshold == first_look.operating_point.threshold
    assert result.timings["second_look"] == 0.0
