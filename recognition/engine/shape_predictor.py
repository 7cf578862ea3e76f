"""dlib's 5-point face landmark predictor (``shape_predictor_5_face_landmarks.dat``) in numpy.

dlib's face-recognition ResNet was trained on chips cut around landmarks from dlib's own shape
predictors; chips cut from these landmarks embed strangers measurably further from enrolled
people than chips cut from MTCNN's five points through a fixed template (../shared/notes/
engine.md). The predictor is Kazemi and Sullivan's "One millisecond face alignment with an
ensemble of regression trees" (CVPR 2014): starting from a mean shape placed in the face box, a
cascade of forests refines the shape; each tree compares the intensities of two pixels that are
indexed relative to the current shape estimate. The file is read directly, as the ResNet's is
(dlib_resnet.py), so dlib itself is not a runtime dependency; tests compare with dlib-bin.

The model's five points, in image terms: 0 and 1 are the outer and inner corner of the eye on
the image's right, 2 and 3 the outer and inner corner of the eye on the image's left, 4 the
bottom of the nose.
"""

from __future__ import annotations

import functools
import math
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .alignment import umeyama
from .errors import WeightsFormatError
from .packaged import packaged_model_path

WEIGHTS_FILE_NAME = "shape_predictor_5_face_landmarks.dat"
LANDMARK_COUNT = 5

# dlib's 5-point chip template on the unit square (get_face_chip_details in dlib's
# image_transforms/interpolation.h), in the predictor's landmark order.
_UNIT_TEMPLATE = np.array(
    [
        (0.8595674595992, 0.2134981538014),
        (0.6460604764104, 0.2289674387677),
        (0.1205750620789, 0.2137274526848),
        (0.3340850613712, 0.2290642403242),
        (0.4901123135679, 0.6277975316475),
    ]
)


def chip_template(size: int, padding: float) -> np.ndarray:
    """Where dlib's face chip of ``size`` pixels with ``padding`` (a fraction of the template's
    extent on each side) puts the five landmarks: (5, 2) in chip pixel coordinates."""
    return (padding + _UNIT_TEMPLATE) / (2 * padding + 1) * size


def chip_matrix(landmarks: np.ndarray, size: int, padding: float) -> np.ndarray:
    """The image -> chip similarity (2x3) that dlib's get_face_chip_details + extract_image_chip
    apply for these five landmarks.

    dlib fits chip -> image by least squares and keeps its rotation and scale s; the chip is
    then the rectangle centred on the image of the chip's centre (size / 2, size / 2) whose
    width is size * s in dlib's inclusive convention, i.e. whose corners lie size * s - 1 image
    pixels apart, mapped onto chip pixels 0 and size - 1.
    """
    chip_to_image = umeyama(chip_template(size, padding), landmarks)
    linear = chip_to_image[:, :2]
    scale = math.sqrt(abs(np.linalg.det(linear)))
    centre = linear @ np.full(2, size / 2.0) + chip_to_image[:, 2]
    rotation = linear / scale
    image_to_chip = rotation.T * ((size - 1) / (size * scale - 1))
    matrix = np.empty((2, 3))
    matrix[:, :2] = image_to_chip
    matrix[:, 2] = np.full(2, (size - 1) / 2.0) - image_to_chip @ centre
    return matrix


def default_weights_path() -> Path:
    """The shape predictor's .dat file inside the installed face-recognition-models package."""
    return packaged_model_path(WEIGHTS_FILE_NAME)


@dataclass(frozen=True)
class CascadeLevel:
    """One level of the cascade: where its feature pixels sit, and its forest.

    anchors (F,): the landmark each feature pixel is placed relative to; offsets (F, 2): its
    offset from that landmark in the mean shape's (normalised) frame. first, second (T, S) and
    thresholds (T, S): each tree's splits in breadth-first order (node n's children are 2n + 1
    and 2n + 2), a split going to the first child when pixel first - pixel second > threshold.
    leaves (T, S + 1, 2 * landmarks): the shape increment of each leaf.
    """

    anchors: np.ndarray
    offsets: np.ndarray
    first: np.ndarray
    second: np.ndarray
    thresholds: np.ndarray
    leaves: np.ndarray

    def __post_init__(self) -> None:
        tree_count, split_count = self.first.shape
        depth = int(np.log2(split_count + 1))
        if 2**depth - 1 != split_count or self.leaves.shape[1] != split_count + 1:
            raise WeightsFormatError(f"trees of {split_count} splits are not complete trees")
        if depth > _MAX_TABLE_DEPTH:
            raise WeightsFormatError(
                f"trees of depth {depth}: this port decides trees of up to {_MAX_TABLE_DEPTH} "
                "levels (dlib's default, and its 5-point model's) by table"
            )
        set_field = object.__setattr__  # frozen dataclass: derived fields are set once, here
        set_field(self, "tree_count", tree_count)
        set_field(self, "split_count", split_count)
        # (2, trees * splits): the two feature pixels of every split, for one gather.
        set_field(self, "split_pixels", np.stack([self.first.reshape(-1), self.second.reshape(-1)]))
        set_field(self, "thresholds_flat", self.thresholds.reshape(-1))
        set_field(self, "split_bits", np.left_shift(1, np.arange(split_count, dtype=np.int32)))
        set_field(self, "leaf_table", _leaf_table(depth))
        set_field(self, "leaf_base", np.arange(tree_count) * (split_count + 1))
        # (coordinates, trees * leaves): the leaves a shape step sums sit along rows.
        set_field(
            self,
            "leaves_by_coordinate",
            np.ascontiguousarray(self.leaves.reshape(tree_count * (split_count + 1), -1).T),
        )


# A tree's leaf follows from the outcomes of all its splits, packed into one integer (bit n:
# split n went to its first child), through one table lookup: no walk from the root, step by
# step, for the 500 trees of a level. The table has 2 ** splits entries, 32,768 at depth 4.
_MAX_TABLE_DEPTH = 4


@functools.cache  # one table for every level of a depth
def _leaf_table(depth: int) -> np.ndarray:
    """For every packed split outcome of a complete tree of ``depth`` (breadth-first splits,
    node n's children 2n + 1 and 2n + 2), the index of the leaf reached from the root."""
    split_count = 2**depth - 1
    outcomes = np.arange(2**split_count, dtype=np.int64)
    node = np.zeros_like(outcomes)
    for _ in range(depth):
        goes_first = (outcomes >> node) & 1
        node = 2 * node + 2 - goes_first
    return (node - split_count).astype(np.intp)


def _packed_integers(data: bytes) -> np.ndarray:
    """Every integer of a file that is nothing but dlib packed integers, in order.

    dlib's portable serialisation writes an integer as a header byte (low nibble: byte count,
    high bit: negative) and its magnitude's bytes, little-endian; a float as two integers
    (mantissa, base-2 exponent). Only the walk from header to header is sequential; decoding
    the ~3 million values is one vectorised pass.
    """
    starts = array("q")  # 8 bytes per entry: a list of Python ints would take ~5 times more
    append = starts.append
    position, end = 0, len(data)
    while position < end:
        append(position)
        position += 1 + (data[position] & 0x0F)
    if position != end:
        raise WeightsFormatError("the file ends inside an integer")
    raw = np.frombuffer(data + bytes(8), dtype=np.uint8)
    positions = np.frombuffer(starts, dtype=np.int64)
    headers = raw[positions]
    sizes = headers & 0x0F
    if ((sizes == 0) | (sizes > 8) | (headers & 0x70 != 0)).any():
        raise WeightsFormatError("a malformed integer header: not a dlib model file")
    # Byte by byte (eight passes over the ~3 million integers) rather than one (n, 8) gather:
    # the same result in a fraction of the memory.
    magnitudes = np.zeros(len(positions), dtype=np.uint64)
    for byte in range(8):
        present = sizes > byte
        if not present.any():
            break
        values_at = raw[positions[present] + 1 + byte].astype(np.uint64)
        magnitudes[present] |= values_at << np.uint64(8 * byte)
    if (magnitudes > np.iinfo(np.int64).max).any():
        raise WeightsFormatError("an integer too large for this model format")
    values = magnitudes.astype(np.int64)
    return np.where(headers & 0x80 != 0, -values, values)


class _IntegerStream:
    """A cursor over the decoded integers, reading dlib's containers and floats."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.pos = 0

    def take(self, count: int) -> np.ndarray:
        if self.pos + count > len(self.values):
            raise WeightsFormatError("unexpected end of file")
        chunk = self.values[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def int(self) -> int:
        return int(self.take(1)[0])

    def length(self, what: str, limit: int = 10_000_000) -> int:
        value = self.int()
        if not 0 <= value <= limit:
            raise WeightsFormatError(f"{what}: implausible length {value}")
        return value

    def floats(self, count: int) -> np.ndarray:
        return _floats(self.take(2 * count))

    def column(self, what: str) -> np.ndarray:
        """A matrix<float,0,1>: -rows, -cols (dlib writes them negated), then the values."""
        rows, cols = -self.int(), -self.int()
        if rows < 0 or cols != 1:
            raise WeightsFormatError(f"{what}: expected a column vector, got {rows}x{cols}")
        return self.floats(rows)


def _floats(pairs: np.ndarray) -> np.ndarray:
    """(mantissa, exponent) integer pairs, flattened, -> float64 values."""
    mantissas, exponents = pairs[0::2], pairs[1::2]
    if (exponents >= 32000).any():  # dlib's markers for inf, -inf and nan
        raise WeightsFormatError("a non-finite value in the model")
    return mantissas.astype(np.float64) * np.exp2(exponents.astype(np.float64))


class ShapePredictor:
    """dlib's shape_predictor: ``predict(rgb, box)`` -> (landmarks, 2) image coordinates."""

    def __init__(self, initial_shape: np.ndarray, levels: list[CascadeLevel]) -> None:
        self.initial_shape = initial_shape  # (landmarks, 2), in the unit square of the box
        self.levels = levels
        if len({len(level.anchors) for level in levels}) > 1:
            raise WeightsFormatError("cascade levels read different numbers of pixels")
        self._placements = [self._placement(level) for level in levels]
        self._pixels_read = sum(len(level.anchors) for level in levels)

    def _placement(self, level: CascadeLevel) -> np.ndarray:
        """Where ``level``'s feature pixels sit, as a linear map of the current shape: (2 *
        features, 2 * landmarks), both sides flattened x, y, x, y, ... (float32, as dlib computes).

        A feature is its anchor landmark plus its offset turned and scaled by the similarity
        (linear part) from the mean shape to the current shape, as dlib places it. In the plane
        that similarity has a closed form: with the centred points as complex numbers u (mean
        shape) and v (current shape), the factor a + ib = sum(conj(u) * v) / sum(|u|^2), linear
        in v (and as the u sum to zero, v needs no centring). So the whole placement is one
        matrix, and a level places its 800 pixels with one product.
        """
        centred = self.initial_shape - self.initial_shape.mean(axis=0)
        turned = np.stack([-centred[:, 1], centred[:, 0]], axis=1)
        # Rows giving a and b from the flattened shape.
        a, b = np.stack([centred.reshape(-1), turned.reshape(-1)]) / float((centred**2).sum())
        offsets = level.offsets.astype(np.float64)
        anchors = np.eye(2 * len(self.initial_shape))
        placement = np.empty((2 * len(offsets), anchors.shape[1]))
        # x' = x_anchor + dx a - dy b, y' = y_anchor + dx b + dy a
        placement[0::2] = anchors[2 * level.anchors] + np.outer(offsets[:, 0], a)
        placement[0::2] -= np.outer(offsets[:, 1], b)
        placement[1::2] = anchors[2 * level.anchors + 1] + np.outer(offsets[:, 0], b)
        placement[1::2] += np.outer(offsets[:, 1], a)
        return placement.astype(np.float32)

    @classmethod
    def load(cls, path: str | Path | None = None) -> ShapePredictor:
        stream = _IntegerStream(_packed_integers(Path(path or default_weights_path()).read_bytes()))
        if stream.int() != 1:
            raise WeightsFormatError("not a dlib shape_predictor file of version 1")
        initial = stream.column("initial shape").reshape(-1, 2)
        coordinates = initial.size

        forests = []
        for _ in range(stream.length("cascade")):
            tree_count = stream.length("forest")
            # Every tree of dlib's predictors is complete and of one depth, so a level is a
            # block of identical records: [splits, (first, second, mantissa, exponent) x
            # splits, leaves, (-coordinates, -1, (mantissa, exponent) x coordinates) x leaves].
            split_count = int(stream.values[stream.pos])
            leaf_count = split_count + 1
            record = 2 + 4 * split_count + leaf_count * (2 + 2 * coordinates)
            block = stream.take(tree_count * record).reshape(tree_count, record)
            splits = block[:, 1 : 1 + 4 * split_count].reshape(tree_count, split_count, 4)
            leaves = block[:, 2 + 4 * split_count :].reshape(tree_count, leaf_count, -1)
            if (
                (block[:, 0] != split_count).any()
                or (block[:, 1 + 4 * split_count] != leaf_count).any()
                or (leaves[:, :, 0] != -coordinates).any()
                or (leaves[:, :, 1] != -1).any()
            ):
                raise WeightsFormatError("the trees of a cascade level differ in shape")
            forests.append(
                (
                    splits[:, :, 0],
                    splits[:, :, 1],
                    _floats(splits[:, :, 2:].reshape(-1)).reshape(tree_count, split_count),
                    _floats(leaves[:, :, 2:].reshape(-1)).reshape(tree_count, leaf_count, -1),
                )
            )
        anchors = [
            stream.take(stream.length("anchors")) for _ in range(stream.length("anchor levels"))
        ]
        offsets = [
            stream.floats(2 * stream.length("offsets")).reshape(-1, 2)
            for _ in range(stream.length("offset levels"))
        ]
        if stream.pos != len(stream.values):
            raise WeightsFormatError("unread data after the model")
        if not (len(forests) == len(anchors) == len(offsets)):
            raise WeightsFormatError("cascade levels, anchors and offsets differ in number")

        levels = []
        for (first, second, thresholds, leaves), level_anchors, level_offsets in zip(
            forests, anchors, offsets, strict=True
        ):
            features = len(level_anchors)
            if (
                len(level_offsets) != features
                or (first < 0).any()
                or (second < 0).any()
                or (first >= features).any()
                or (second >= features).any()
                or (level_anchors < 0).any()
                or (level_anchors >= len(initial)).any()
            ):
                raise WeightsFormatError("a split or anchor indexes past its table")
            levels.append(
                CascadeLevel(
                    anchors=level_anchors.astype(np.intp),
                    offsets=level_offsets.astype(np.float32),
                    first=first.astype(np.intp),
                    second=second.astype(np.intp),
                    thresholds=thresholds.astype(np.float32),
                    leaves=leaves.astype(np.float32),
                )
            )
        return cls(initial, levels)

    def predict(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The landmarks (n, 2) of the face in ``box`` = (left, top, right, bottom), inclusive
        integer pixel bounds as dlib's rectangle, on ``rgb``, an (h, w, 3) uint8 image."""
        left, top, right, bottom = box
        # dlib's unnormalizing_tform: the unit square onto the box's corners.
        origin = np.array([left, top], dtype=np.float32)
        extent = np.array([right - left, bottom - top], dtype=np.float32)
        height, width = rgb.shape[:2]
        # The pixels framed by a border of zeros, one pixel wide: a feature outside the image
        # is clamped onto the border and reads 0 (as dlib's does) through the same single
        # gather as every other feature.
        framed = np.zeros((height + 2, width + 2, 3), dtype=np.uint8)
        framed[1:-1, 1:-1] = rgb
        # Grey levels are needed at the pixels the cascade reads only: a small image is turned
        # grey whole, once; in a larger one, just the pixels each level reads are.
        if framed.shape[0] * framed.shape[1] <= self._pixels_read:
            grey = intensity(framed).reshape(-1)

            def read(flat: np.ndarray) -> np.ndarray:
                return grey.take(flat)

        else:
            colour = framed.reshape(-1, 3)

            def read(flat: np.ndarray) -> np.ndarray:
                return intensity(colour.take(flat, axis=0))

        # The unit square onto the box, with dlib's rounding to the nearest pixel (+ 0.5, then
        # truncation, which floors every coordinate that can land inside: a negative one is
        # clamped onto the border anyway) and the frame (+ 1), for flattened x, y, x, y, ...
        # (every level reads as many pixels: dlib's feature pool)
        features = len(self.levels[0].anchors)
        scale = np.tile(extent, features)
        shift = np.tile(origin + np.float32(1.5), features)
        shape = self.initial_shape.astype(np.float32).reshape(-1)
        for level, placement in zip(self.levels, self._placements, strict=True):
            # Feature pixels follow the current shape (_placement).
            where = (placement @ shape * scale + shift).astype(np.intp)
            flat = np.ravel_multi_index((where[1::2], where[0::2]), framed.shape[:2], mode="clip")
            values = read(flat)

            # Every split of every tree decided at once; each tree's outcomes, packed into an
            # integer, give its leaf by table (_leaf_table).
            first, second = values.take(level.split_pixels)
            goes_first = first - second > level.thresholds_flat
            outcomes = goes_first.reshape(level.tree_count, level.split_count) @ level.split_bits
            leaf = level.leaf_base + level.leaf_table.take(outcomes)
            shape = shape + level.leaves_by_coordinate.take(leaf, axis=1).sum(axis=1)
        return shape.astype(np.float64).reshape(-1, 2) * extent + origin


def intensity(rgb: np.ndarray) -> np.ndarray:
    """dlib's grey level of RGB pixels (..., 3): the integer mean of the three channels, as
    int16 (so that the difference of two is exact)."""
    return rgb.sum(axis=-1, dtype=np.int16) // 3
