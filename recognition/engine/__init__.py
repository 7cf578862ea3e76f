"""The face engine: decode, detect (MTCNN), align, embed (dlib's ResNet or facenet's VGGFace2
network) and match against a gallery.

Importing this package is cheap (PIL and numpy): the web tier uses load_image, the errors and
the embedder names without paying for torch. Engine, get_engine and load_engine import torch
and the models' code on first access.
"""

from typing import TYPE_CHECKING

from .errors import (
    CorruptImage,
    EmbedderUnavailable,
    ImageError,
    ImageTooLarge,
    NotAnImage,
    WeightsFormatError,
)
from .imaging import load_image
from .names import (
    DLIB_EMBEDDER,
    FUSED_EMBEDDER,
    VGGFACE2_EMBEDDER,
    configured_embedder_name,
    first_look_dim,
)
from .results import Face, FaceResult, Recognition

if TYPE_CHECKING:
    from .core import Engine, get_engine, load_engine

_HEAVY = {"Engine", "get_engine", "load_engine"}


def __getattr__(name: str) -> object:
    if name in _HEAVY:
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CorruptImage",
    "DLIB_EMBEDDER",
    "EmbedderUnavailable",
    "Engine",
    "FUSED_EMBEDDER",
    "Face",
    "FaceResult",
    "ImageError",
    "ImageTooLarge",
    "NotAnImage",
    "Recognition",
    "VGGFACE2_EMBEDDER",
    "WeightsFormatError",
    "configured_embedder_name",
    "first_look_dim",
    "get_engine",
    "load_engine",
    "load_image",
]
