"""Embedders: turn a detected face into a fixed-length vector whose Euclidean distances say
"same person" (small) or "different people" (large).

Each embedder owns its input preparation (the crop or aligned chip its network was trained on)
and its default match threshold, because both are properties of the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from . import alignment, dlib_resnet, facenet_keras, shape_predictor
from .detection import Detection
from .errors import EmbedderUnavailable
from .names import DLIB_EMBEDDER, FACENET_KERAS_EMBEDDER, VGGFACE2_EMBEDDER, embedder_name

VGGFACE2_WEIGHTS_FILE = "20180402-114759-vggface2.pt"


class Embedder(Protocol):
    name: str
    dim: int
    default_threshold: float

    def prepare(self, image: Image.Image, detection: Detection) -> np.ndarray:
        """The network's (size, size, 3) uint8 input for one face."""

    def embed(self, chips: np.ndarray, mirror: bool = False) -> np.ndarray:
        """(n, size, size, 3) uint8 -> (n, dim) float32, as one batch; ``mirror``: each the
        mean of the chip's and its mirror image's embeddings."""


def _batch(chips: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW-shaped tensor kept in channels-last memory: a free view, and the
    layout the (channels-last) networks run fastest on."""
    # np.require copies only when needed: torch wants writable memory it may share.
    writable = np.require(chips, dtype=np.uint8, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    return torch.from_numpy(writable).permute(0, 3, 1, 2).float()


def _resized_crop(
    image: Image.Image, box: tuple[float, float, float, float], size: int
) -> np.ndarray:
    """The (size, size, 3) uint8 network input of ``box`` (left, top, right, bottom, already
    inside the image), resized bilinearly (PIL: antialiased when shrinking); black when the box
    is empty (a face detected off the image's edge)."""
    if box[2] <= box[0] or box[3] <= box[1]:
        return np.zeros((size, size, 3), dtype=np.uint8)
    crop = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(crop, dtype=np.uint8)


# dlib's face-recognition chips: 150 px with 0.25 padding around the 5-point template.
DLIB_CHIP_PADDING = 0.25
# Where dlib's frontal (HOG) detector, whose boxes the 5-point predictor was trained on, puts its
# box relative to MTCNN's: a square of 1.1 MTCNN box widths, centred 5% of the box height lower.
# Measured on five_celebrity/train (86 faces found by both; medians, interquartile ranges within
# +-0.06): not on any evaluation set.
_PREDICTOR_BOX_SIDE = 1.1
_PREDICTOR_BOX_DROP = 0.05
# The predictor reads pixels around the face only; this much of the box's size on every side is
# handed to it (its feature pixels stay well inside), not the whole photo.
_PREDICTOR_CONTEXT = 0.75


def predictor_box(box: np.ndarray) -> tuple[int, int, int, int]:
    """The dlib-style (left, top, right, bottom) box for an MTCNN box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = _PREDICTOR_BOX_SIDE * (x2 - x1)
    centre_x = (x1 + x2) / 2
    centre_y = (y1 + y2) / 2 + _PREDICTOR_BOX_DROP * (y2 - y1)
    return (
        round(centre_x - side / 2),
        round(centre_y - side / 2),
        round(centre_x + side / 2),
        round(centre_y + side / 2),
    )


class DlibEmbedder:
    """dlib's face ResNet (99.38% on LFW), ported to PyTorch, on the chips dlib cuts: aligned
    on dlib's own 5-point landmarks (shape_predictor.py), which separates strangers from
    enrolled people better than MTCNN's five points through a fixed template. Enrolment embeds
    each face with its mirror image and averages the two (``mirror``)."""

    name = DLIB_EMBEDDER
    dim = dlib_resnet.EMBEDDING_DIM
    # dlib's documented same-person threshold for this network (1:1 verification; 1:N
    # identification uses the gallery's calibrated operating point instead).
    default_threshold = 0.6
    # recognition.gallery's open-set score was designed and measured on this network.
    open_set = True

    def __init__(
        self, weights: str | Path | None = None, landmarks: str | Path | None = None
    ) -> None:
        self.network = dlib_resnet.load_dlib_resnet(weights)
        self.network.to(memory_format=torch.channels_last)
        self.predictor = shape_predictor.ShapePredictor.load(landmarks)

    def landmarks(self, image: Image.Image, detection: Detection) -> np.ndarray:
        """dlib's five landmarks (shape_predictor.py's order) of the detected face."""
        box = predictor_box(detection.box)
        left, top, right, bottom = box
        context = round(_PREDICTOR_CONTEXT * (right - left))
        region = (
            max(left - context, 0),
            max(top - context, 0),
            min(right + context + 1, image.width),
            min(bottom + context + 1, image.height),
        )
        if region[2] <= region[0] or region[3] <= region[1]:
            # The box lies outside the image: the predictor sees black, as dlib's would.
            region = (left, top, left + 1, top + 1)
            pixels = np.zeros((1, 1, 3), dtype=np.uint8)
        else:
            pixels = np.asarray(image.crop(region), dtype=np.uint8)
        offset = np.array(region[:2], dtype=np.float64)
        local_box = (left - region[0], top - region[1], right - region[0], bottom - region[1])
        return self.predictor.predict(pixels, local_box) + offset

    def prepare(self, image: Image.Image, detection: Detection) -> np.ndarray:
        matrix = shape_predictor.chip_matrix(
            self.landmarks(image, detection), dlib_resnet.CHIP_SIZE, DLIB_CHIP_PADDING
        )
        return alignment.warp(image, matrix, dlib_resnet.CHIP_SIZE)

    def embed(self, chips: np.ndarray, mirror: bool = False) -> np.ndarray:
        if mirror:
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        with torch.inference_mode():
            embeddings = self.network(_batch(chips))
            if mirror:
                embeddings = embeddings.reshape(2, len(chips) // 2, -1).mean(dim=0)
            return embeddings.numpy().astype(np.float32, copy=False)


def torch_home() -> Path:
    """Where torch (and facenet-pytorch) keep downloaded weights: $TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"
    return Path(os.environ.get("TORCH_HOME", str(default))).expanduser()


class FacenetEmbedder:
    """facenet-pytorch's InceptionResnetV1 trained on VGGFace2: 512-d unit vectors from
    160x160 crops of the MTCNN box, made the way facenet-pytorch's MTCNN makes them."""

    name = VGGFACE2_EMBEDDER
    dim = 512
    # The embeddings are L2-normalised, so distances lie in [0, 2] and d^2 = 2 - 2 cos: 1.0 is
    # cosine similarity 0.5, in the usual range for this network (FaceNet's verification
    # thresholds on squared distance are about 1.1-1.2, i.e. d of about 1.05-1.1).
    default_threshold = 1.0
    open_set = False  # not measured with the open-set score: nearest example within 1.0
    crop_size = 160

    def __init__(self, weights: str | Path | None = None) -> None:
        path = Path(weights) if weights else torch_home() / "checkpoints" / VGGFACE2_WEIGHTS_FILE
        if not path.is_file():
            # facenet-pytorch would download the file here; this machine never downloads.
            raise EmbedderUnavailable(
                f"the vggface2 embedder needs its weights file at {path} (111,898,327 bytes, "
                "facenet-pytorch's 20180402-114759-vggface2.pt); it is not there and is never "
                "downloaded at run time: fetch it when building the machine image, or set "
                "FACESITE_EMBEDDER=dlib"
            )
        from facenet_pytorch import InceptionResnetV1

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            # The checkpoint also holds the VGGFace2 classifier ("logits"), unused here.
            state = {k: v for k, v in state.items() if not k.startswith("logits.")}
            # On the meta device: no random initialisation of 23M parameters that are about to
            # be replaced.
            with torch.device("meta"):
                network = InceptionResnetV1(pretrained=None, classify=False)
            network.load_state_dict(state, strict=True, assign=True)
        except Exception as exc:  # torch.load alone raises half a dozen types for bad files
            raise EmbedderUnavailable(f"{path} is not a usable vggface2 checkpoint: {exc}") from exc
        self.network = network.eval().to(memory_format=torch.channels_last)

    def prepare(self, image: Image.Image, detection: Detection) -> np.ndarray:
        # facenet-pytorch's extract_face with margin 0: the box truncated to whole pixels and
        # clipped to the image, resized bilinearly (PIL, so antialiased when shrinking).
        x1, y1, x2, y2 = detection.box
        box = (
            int(max(x1, 0)),
            int(max(y1, 0)),
            int(min(x2, image.width)),
            int(min(y2, image.height)),
        )
        return _resized_crop(image, box, self.crop_size)

    def embed(self, chips: np.ndarray, mirror: bool = False) -> np.ndarray:
        if mirror:
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        # fixed_image_standardization, as facenet-pytorch's MTCNN post-processing applies it.
        with torch.inference_mode():
            batch = (_batch(chips) - 127.5) / 128.0
            embeddings = self.network(batch)
            if mirror:
                embeddings = embeddings.reshape(2, len(chips) // 2, -1).mean(dim=0)
            return embeddings.numpy().astype(np.float32, copy=False)


class FacenetKerasEmbedder:
    """FaceNet's 128-d unit vectors (facenet_keras.py) from the MTCNN box grown by
    facenet_keras.MARGIN pixels, standardised per image: the engine's second opinion on the faces
    whose first-look answer is doubtful (core.py)."""

    name = FACENET_KERAS_EMBEDDER
    dim = facenet_keras.EMBEDDING_DIM
    crop_size = facenet_keras.CROP_SIZE

    def __init__(self, weights: str | Path | None = None) -> None:
        self.network = facenet_keras.load_network(Path(weights) if weights else None)

    def prepare(self, image: Image.Image, detection: Detection) -> np.ndarray:
        x1, y1, x2, y2 = (float(value) for value in detection.box)
        half = facenet_keras.MARGIN / 2
        box = (
            max(x1 - half, 0.0),
            max(y1 - half, 0.0),
            min(x2 + half, float(image.width)),
            min(y2 + half, float(image.height)),
        )
        return _resized_crop(image, box, self.crop_size)

    def embed(self, chips: np.ndarray, mirror: bool = False) -> np.ndarray:
        if mirror:
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        batch = _batch(chips)
        # FaceNet's prewhitening: per image, the standard deviation floored at 1/sqrt(size).
        flat = batch.reshape(len(batch), -1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        floor = 1.0 / flat.shape[1] ** 0.5
        spread = flat.std(dim=1, correction=0).clamp(min=floor).view(-1, 1, 1, 1)
        with torch.inference_mode():
            embeddings = self.network((batch - mean) / spread)
            if mirror:
                mean_pair = embeddings.reshape(2, len(chips) // 2, -1).mean(dim=0)
                embeddings = torch.nn.functional.normalize(mean_pair, dim=1)
            return embeddings.numpy().astype(np.float32, copy=False)


# FACESITE_EMBEDDER value -> the networks: the first look's, then the second opinion's if any.
_EMBEDDERS: dict[str, tuple[type, ...]] = {
    "dlib+facenet": (DlibEmbedder, FacenetKerasEmbedder),
    "dlib": (DlibEmbedder,),
    "vggface2": (FacenetEmbedder,),
}


def load_embedders(kind: str) -> tuple[Embedder, Embedder | None]:
    """The embedder a FACESITE_EMBEDDER value names, and its second opinion (or None)."""
    embedder_name(kind)  # a ValueError listing the valid choices for anything else
    first, *second = (network() for network in _EMBEDDERS[kind])
    return first, second[0] if second else None
