"""Face detection with facenet-pytorch's MTCNN (its P/R/O-net weights ship inside its wheel)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import torchvision_compat  # noqa: F401  (must precede any facenet_pytorch import)

# The smallest face looked for, in pixels of the image MTCNN runs on. It sets the first level
# of MTCNN's image pyramid (12 / min_face_size), and with it most of the detection cost: each
# halving of it roughly quadruples the pixels PNet scans. The floor is facenet-pytorch's default,
# 20 px, which is already about as small as a face can be and still be recognised (its 150 px
# chip is a 7.5x upscale); MTCNN still finds faces a little below it (18 px ones in the 64x64
# course images). Past 320 px it grows with the image, as a face under 1/16 of a photo's short
# side is a bystander rather than the subject; it is capped at 40 px (3% of a 1280 px detection
# copy), so the faces of a large group photo are still found.
_MIN_FACE_FLOOR = 20
_MIN_FACE_CEILING = 40
_MIN_FACE_FRACTION = 1 / 16
# Stage thresholds of P-, R- and O-net. The first two are facenet-pytorch's defaults (they only
# prune candidates). The last decides what counts as a face: at the default 0.7, web photos
# yield hands, ears and jewellery (0.73-0.89 on the five_celebrity set), and one such hand was
# larger than the real face, so it would have been the face answered for. Real faces score
# >= 0.95 except when heavily occluded, which is the trade made here.
_THRESHOLDS = (0.6, 0.7, 0.9)
_PYRAMID_FACTOR = 0.709


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in image coordinates: box (x1, y1, x2, y2), MTCNN's probability, and landmarks
    (5, 2): left eye, right eye, nose, mouth left, mouth right (the subject's left/right as it
    appears in the image, i.e. the first eye is the one on the image's left)."""

    box: np.ndarray
    probability: float
    landmarks: np.ndarray


def min_face_size(width: int, height: int) -> int:
    """The MTCNN minimum face size for an image of this size (see _MIN_FACE_FRACTION)."""
    relative = round(min(width, height) * _MIN_FACE_FRACTION)
    return int(min(max(relative, _MIN_FACE_FLOOR), _MIN_FACE_CEILING))


class FaceDetector:
    """MTCNN on a copy of the image no larger than ``max_side``, results in full-size pixels."""

    def __init__(self, max_side: int) -> None:
        # Imported here, not at the top, so that import sorting can't move it above
        # torchvision_compat.
        from facenet_pytorch import MTCNN
        from facenet_pytorch.models.utils.detect_face import detect_face

        if max_side < 64:
            raise ValueError(f"FACESITE_DETECT_MAX_SIDE must be at least 64, got {max_side}")
        self.max_side = max_side
        mtcnn = MTCNN(device=torch.device("cpu")).eval()
        # Channels-last: CPU max-pooling (ceil_mode, as every MTCNN stage uses) runs about ten
        # times faster on NHWC than on NCHW tensors; convolutions follow the weights' layout.
        mtcnn.to(memory_format=torch.channels_last)
        self._nets = (mtcnn.pnet, mtcnn.rnet, mtcnn.onet)
        self._detect_face = detect_face

    def detect(self, image: Image.Image) -> list[Detection]:
        """Every face found, largest box first."""
        small = image
        if max(image.size) > self.max_side:
            ratio = self.max_side / max(image.size)
            target = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
            # reducing_gap: a fast box-filter pass first, then an antialiased bilinear resize.
            small = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        smallest = min_face_size(*small.size)
        if min(small.size) < smallest:
            # No face of the minimum size fits (and MTCNN's pyramid would be empty).
            return []
        # MTCNN's own pipeline function rather than MTCNN.detect(): the minimum face size
        # varies per image, and passing it as an argument keeps the detector stateless (and so
        # safe to share between threads) instead of rewriting an attribute on every call.
        batch_boxes, batch_points = self._detect_face(
            small,
            smallest,
            *self._nets,
            list(_THRESHOLDS),
            _PYRAMID_FACTOR,
            torch.device("cpu"),
        )
        # One image in, so one entry of each (object) array: rows of x1, y1, x2, y2, probability.
        found = np.asarray(batch_boxes[0], dtype=float).reshape(-1, 5)
        if not len(found):
            return []
        boxes, probabilities = found[:, :4], found[:, 4]
        points = np.asarray(batch_points[0], dtype=float).reshape(-1, 5, 2)
        scale = np.array([image.width / small.width, image.height / small.height])
        boxes = boxes * np.tile(scale, 2)
        points = points * scale
        order = np.argsort(
            -(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable"
        )
        return [
            Detection(box=boxes[i], probability=float(probabilities[i]), landmarks=points[i])
            for i in order
        ]
