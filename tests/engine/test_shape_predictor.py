"""The numpy port of dlib's 5-point shape predictor and dlib's chip geometry, against dlib-bin
(the reference implementation, a test-only dependency)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recognition.engine import shape_predictor
from recognition.engine.errors import WeightsFormatError
from recognition.engine.shape_predictor import ShapePredictor, chip_matrix


@pytest.fixture(scope="module")
def predictor() -> ShapePredictor:
    return ShapePredictor.load()


@pytest.fixture(scope="module")
def dlib_faces(five_celebrity_dir: Path) -> list[tuple[np.ndarray, object]]:
    """(RGB pixels, dlib rectangle) of the faces dlib's own detector finds in 20 photos."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    faces = []
    for path in sorted((five_celebrity_dir / "train").glob("*/*"))[:20]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        faces += [(pixels, rect) for rect in detector(pixels, 1)]
    assert len(faces) >= 15
    return faces


def test_landmarks_match_dlib(predictor: ShapePredictor, dlib_faces) -> None:
    import dlib

    reference = dlib.shape_predictor(str(shape_predictor.default_weights_path()))
    errors = []
    for pixels, rect in dlib_faces:
        theirs = reference(pixels, rect)
        expected = np.array([(theirs.part(i).x, theirs.part(i).y) for i in range(5)])
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        ours = predictor.predict(pixels, box)
        errors.append(np.abs(np.floor(ours + 0.5) - expected).max())
    errors = np.array(errors)
    # dlib reports whole pixels; a split decided on the other side of a float rounding now and
    # then moves a point by a pixel or two. Most faces agree exactly.
    assert errors.max() <= 2, errors
    assert (errors == 0).mean() >= 0.75, errors


def test_leaf_table_follows_each_tree_from_its_root() -> None:
    """Depth 2: split 0 at the root, 1 and 2 below it; bit n of the index is split n's outcome
    (1: to the first child). Leaves 0-3 left to right."""
    table = shape_predictor._leaf_table(2)
    for outcomes in range(8):
        root, left, right = (outcomes >> 0) & 1, (outcomes >> 1) & 1, (outcomes >> 2) & 1
        expected = (0 if left else 1) if root else (2 if right else 3)
        assert table[outcomes] == expected, outcomes


def test_chip_geometry_matches_dlib(dlib_faces) -> None:
    """chip_matrix puts the five landmarks where dlib's get_face_chip_details does."""
    import dlib

    reference = dlib.shape_predictor(str(shape_predictor.default_weights_path()))
    for pixels, rect in dlib_faces[:8]:
        shape = reference(pixels, rect)
        landmarks = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], float)
        details = dlib.get_face_chip_details(shape, 150, 0.25)
        # dlib's chip: details.rect turned by details.angle about its centre; chip pixel
        # (0, 0) is its top-left corner, (149, 149) the bottom-right one. Its corners are
        # width() - 1 apart (dlib's rectangles are inclusive).
        rect = details.rect
        centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        span = rect.right() - rect.left()
        cos, sin = np.cos(details.angle), np.sin(details.angle)
        turn = np.array([[cos, -sin], [sin, cos]])
        matrix = chip_matrix(landmarks, 150, 0.25)
        for corner, chip in (((-1, -1), (0, 0)), ((1, 1), (149, 149)), ((1, -1), (149, 0))):
            image_point = centre + turn @ (np.array(corner) * span / 2)
            mapped = matrix[:, :2] @ image_point + matrix[:, 2]
            assert np.allclose(mapped, chip, atol=1e-6), (mapped, chip)


def test_damaged_files_are_refused(tmp_path: Path) -> None:
    data = shape_predictor.default_weights_path().read_bytes()
    for name, damaged in (
        ("truncated", data[: len(data) // 2]),
        ("extended", data + bytes([1, 5])),
        ("other", b"\x01\x02not a model"),
    ):
        path = tmp_path / name
        path.write_bytes(damaged)
        with pytest.raises(WeightsFormatError):
            ShapePredictor.load(path)
