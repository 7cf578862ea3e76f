"""MTCNN detection (through the engine), the NMS that makes torchvision import, and alignment."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recognition.engine import alignment, core
from recognition.engine.detection import min_face_size


def test_one_face_in_each_course_photo(engine, distinct_course_photos: list[Path]) -> None:
    assert len(distinct_course_photos) == 10
    for path in distinct_course_photos:
        image = Image.open(path).convert("RGB")
        faces = engine.faces(image)
        assert len(faces) == 1, path.name
        x1, y1, x2, y2 = faces[0].box
        assert 12 <= x2 - x1 <= 64 and 12 <= y2 - y1 <= 64, faces[0].box
        assert faces[0].probability >= 0.9


def test_every_face_of_a_group_photo(engine, two_face_photo: Path) -> None:
    faces = engine.embed_image(two_face_photo)
    assert len(faces) == 2
    assert faces[0].area >= faces[1].area  # largest first
    # Two different people, side by side.
    centres = [(face.box[0] + face.box[2]) / 2 for face in faces]
    assert abs(centres[0] - centres[1]) > 50
    assert np.linalg.norm(faces[0].embedding - faces[1].embedding) > 0.6


def test_no_face_in_a_blank_picture(engine) -> None:
    assert engine.faces(Image.new("RGB", (320, 240), (128, 128, 128))) == []


@pytest.mark.parametrize("size", [(1, 1), (15, 15), (3000, 12), (12, 64)])
def test_images_too_small_for_a_face(engine, size: tuple[int, int]) -> None:
    assert engine.faces(Image.new("RGB", size, (128, 128, 128))) == []


def test_faces_accepts_any_mode(engine, single_face_photo: Path) -> None:
    grey = Image.open(single_face_photo).convert("L")
    assert len(engine.faces(grey)) == 1


def test_large_photos_are_detected_on_a_smaller_copy(engine, single_face_photo: Path) -> None:
    """A photo 8x the size (past FACESITE_DETECT_MAX_SIDE): same face, coordinates scaled back."""
    image = Image.open(single_face_photo).convert("RGB")
    (small,) = engine.faces(image)
    large_image = image.resize((image.width * 8, image.height * 8), Image.Resampling.BICUBIC)
    assert max(large_image.size) > engine.detector.max_side
    (large,) = engine.faces(large_image)
    width = small.box[2] - small.box[0]
    assert np.allclose(np.array(large.box) / 8, small.box, atol=0.1 * width)
    assert np.allclose(large.landmarks / 8, small.landmarks, atol=0.05 * width)
    # The chips come from the full-resolution pixels, so the person is the same to each network.
    first = engine.embedder.dim
    assert np.linalg.norm(large.embedding[:first] - small.embedding[:first]) < 0.3
    if engine.second_opinion is not None:
        second = (large.embedding[first:] - small.embedding[first:]) / core.FUSION_WEIGHT
        assert np.linalg.norm(second) < 0.5


def test_min_face_size_follows_the_image() -> None:
    assert min_face_size(64, 64) == 20  # facenet-pytorch's default for small images
    assert min_face_size(640, 480) == 30  # a 16th of the short side
    assert min_face_size(1280, 960) == 40  # capped


def reference_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """The textbook greedy algorithm, pairwise, in plain Python."""

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = width * height
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: -scores[i]):
        if all(iou(boxes[i], boxes[k]) <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_the_greedy_algorithm(seed: int) -> None:
    from recognition.engine.torchvision_compat import torchvision

    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 100, size=(200, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(5, 40, size=(200, 2))], axis=1)
    scores = rng.permutation(200) / 200.0  # distinct, so the order is unambiguous
    for threshold in (0.3, 0.5, 0.7):
        kept = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), threshold)
        assert kept.dtype == torch.int64
        assert kept.tolist() == reference_nms(boxes, scores, threshold)
    # batched: boxes of different classes never suppress each other
    classes = torch.tensor(rng.integers(0, 3, size=200))
    kept = set(
        torchvision.ops.batched_nms(
            torch.tensor(boxes), torch.tensor(scores), classes, 0.5
        ).tolist()
    )
    for label in range(3):
        members = np.flatnonzero(classes.numpy() == label)
        expected = reference_nms(boxes[members], scores[members], 0.5)
        assert {int(members[i]) for i in expected} == kept & set(members.tolist())


def test_nms_strategies_agree(monkeypatch) -> None:
    """Past _MATRIX_NMS_MAX_BOXES boxes NMS switches strategy; both give the same answer."""
    from recognition.engine import torchvision_compat

    rng = np.random.default_rng(7)
    corners = rng.uniform(0, 300, size=(600, 2))
    boxes = torch.tensor(np.concatenate([corners, corners + rng.uniform(5, 60, (600, 2))], 1))
    scores = torch.tensor(rng.uniform(size=600))
    matrix = torchvision_compat._nms(boxes, scores, 0.5)
    monkeypatch.setattr(torchvision_compat, "_MATRIX_NMS_MAX_BOXES", 100)
    assert torchvision_compat._nms(boxes, scores, 0.5).tolist() == matrix.tolist()


def test_nms_of_nothing() -> None:
    from recognition.engine.torchvision_compat import torchvision

    kept = torchvision.ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert kept.shape == (0,) and kept.dtype == torch.int64


def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 200, size=(5, 2))
    angle, scale, shift = math.radians(25), 1.7, np.array([-30.0, 12.5])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = points @ (scale * rotation).T + shift
    matrix = alignment.umeyama(points, moved)
    assert np.allclose(matrix[:, :2], scale * rotation) and np.allclose(matrix[:, 2], shift)
    # A mirrored point set still gets a proper rotation (no reflection), the best one can do.
    mirrored = moved * np.array([-1.0, 1.0])
    assert np.linalg.det(alignment.umeyama(points, mirrored)[:, :2]) > 0


def test_warp_is_resolution_independent(single_face_photo: Path, engine) -> None:
    """The same face from a 5x larger copy gives the same chip: coordinates are consistent and
    the large copy is pre-shrunk rather than point-sampled."""
    image = Image.open(single_face_photo).convert("RGB")
    (face,) = engine.faces(image)
    large = image.resize((image.width * 5, image.height * 5), Image.Resampling.BICUBIC)
    template, size = alignment.DLIB_CHIP_TEMPLATE, 150
    chip = alignment.align(image, face.landmarks, template, size).astype(int)
    # index coordinates: pixel centre p of the small image is at (p + 0.5) * 5 - 0.5
    large_chip = alignment.align(large, (face.landmarks + 0.5) * 5 - 0.5, template, size).astype(
        int
    )
    assert np.abs(chip - large_chip).mean() < 4.0
    shifted = alignment.align(large, (face.landmarks + 1.5) * 5 - 0.5, template, size).astype(int)
    assert np.abs(chip - shifted).mean() > np.abs(chip - large_chip).mean() + 2.0


def test_warp_does_not_alias() -> None:
    """A 1-pixel checkerboard seen 8x smaller must come out as flat grey, not as a pattern."""
    board = (np.indices((1200, 1200)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(board).convert("RGB")
    matrix = np.array([[1 / 8, 0.0, 0.0], [0.0, 1 / 8, 0.0]])
    chip = alignment.warp(image, matrix, 150).astype(float)
    assert abs(chip.mean() - 127.5) < 3 and chip.std() < 3


def test_warp_outside_the_image_is_black() -> None:
    image = Image.new("RGB", (100, 100), (200, 50, 50))
    # Chip pixel (x, y) shows image pixel (x - 50, y - 50): the top-left quarter is outside.
    chip = alignment.warp(image, np.array([[1.0, 0.0, 50.0], [0.0, 1.0, 50.0]]), 100)
    assert (chip[:45, :45] == 0).all()
    assert (chip[55:, 55:] == (200, 50, 50)).all()
    nowhere = alignment.warp(image, np.array([[1.0, 0.0, 500.0], [0.0, 1.0, 0.0]]), 100)
    assert not nowhere.any()
