"""Face alignment: a similarity transform from detected landmarks to a template, and the warp.

Coordinates: landmarks and templates are in pixel-index coordinates (the centre of pixel (i, j)
is (i, j)), as MTCNN reports them and as dlib's chip template was measured. PIL's transforms
use edge coordinates (that centre is at (i + 0.5, j + 0.5)); the conversion happens in one place,
``warp``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# dlib's 150x150 chip (padding 0.25 around its 5-point landmarks) expressed for MTCNN's five
# points: left eye, right eye, nose, mouth left, mouth right. Measured inside dlib chips and
# symmetrised (see ../shared/notes/engine.md); it reproduces dlib's own alignment closely.
DLIB_CHIP_TEMPLATE = np.array(
    [(48.33, 45.34), (101.54, 45.03), (74.29, 80.49), (50.48, 100.46), (99.21, 100.20)],
    dtype=np.float64,
)

# Bilinear sampling reads 2x2 source pixels per output pixel: when the source is shrunk by more
# than this factor, detail between samples aliases (jagged edges, moire on hair and fabric).
_MAX_BILINEAR_SHRINK = 1.5


def umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity transform (rotation, uniform scale, translation) taking
    ``source`` points to ``target`` points, as a 2x3 matrix [A | t]: target ~ A @ p + t.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns", always a proper rotation. In the plane it has a closed form (no SVD): with the
    centred points as complex numbers s and t, the scaled rotation is the complex factor
    sum(conj(s) * t) / sum(|s|^2).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise ValueError(f"need two (n, 2) point sets, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    power = float((source_centred**2).sum())
    if power <= 0:
        raise ValueError("the source points coincide: no transform is defined")
    sx, sy = source_centred[:, 0], source_centred[:, 1]
    tx, ty = target_centred[:, 0], target_centred[:, 1]
    a = float(sx @ tx + sy @ ty) / power
    b = float(sx @ ty - sy @ tx) / power
    matrix = np.empty((2, 3))
    matrix[:, :2] = ((a, -b), (b, a))
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def warp(image: Image.Image, matrix: np.ndarray, size: int) -> np.ndarray:
    """Sample the ``size`` x ``size`` chip that ``matrix`` (image -> chip, index coordinates,
    a similarity) maps the image onto: bilinear, black outside the image, (size, size, 3) uint8.

    Only the region of the image that lands in the chip is touched. When that region is much
    larger than the chip it is first shrunk by an integer factor with a box filter (the pyramid
    step dlib also takes), so bilinear sampling never skips over source pixels.
    """
    linear = matrix[:, :2]
    scale = math.sqrt(abs(np.linalg.det(linear)))  # chip pixels per image pixel
    inverse = np.linalg.inv(linear)
    # Chip corners, back in the image: the part of the image the chip sees (plus a pixel for
    # the bilinear neighbours), clipped to the image.
    corners = np.array([(0, 0), (size - 1, 0), (0, size - 1), (size - 1, size - 1)], float)
    seen = (corners - matrix[:, 2]) @ inverse.T
    left, top = np.floor(seen.min(axis=0)).astype(int) - 1
    right, bottom = np.ceil(seen.max(axis=0)).astype(int) + 2
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right <= left or bottom <= top:  # the face lies entirely outside the image
        return np.zeros((size, size, 3), dtype=np.uint8)
    region = image.crop((left, top, right, bottom))

    shrink = max(1, math.ceil(1.0 / (scale * _MAX_BILINEAR_SHRINK)))
    if shrink > 1:
        region = region.reduce(shrink)

    # In edge coordinates, region pixel r covers image [left + r*shrink, left + (r+1)*shrink):
    # image_edge = region_edge * shrink + (left, top). Chip edge = index + 0.5, likewise image.
    # PIL wants the map chip_edge -> region_edge as the six coefficients of a 2x3 matrix.
    offset = np.array([left, top], dtype=np.float64)
    to_image = np.empty((2, 3))
    to_image[:, :2] = inverse
    to_image[:, 2] = -inverse @ matrix[:, 2]  # chip index -> image index
    to_region = to_image / shrink
    to_region[:, 2] = (to_image[:, 2] + 0.5 - inverse @ np.full(2, 0.5) - offset) / shrink
    chip = region.transform(
        (size, size),
        Image.Transform.AFFINE,
        tuple(to_region.reshape(-1)),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.asarray(chip, dtype=np.uint8)


def align(image: Image.Image, landmarks: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` chip with the five landmarks moved onto the template."""
    return warp(image, umeyama(landmarks, template), size)
