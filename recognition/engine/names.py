"""Embedder names, without loading any model: the web tier needs them to pick gallery snapshots.

An embedder's name is stored with every enrolled sample and gallery snapshot; embeddings made by
different networks (or differently aligned inputs) are not comparable, so a change to what an
embedder computes must come with a new name.
"""

from __future__ import annotations

# "-sp5": chips aligned on dlib's 5-point landmarks (the first version used MTCNN's landmarks
# through a fixed template: its embeddings are not comparable, so re-enrol).
DLIB_EMBEDDER = "dlib-resnet-v1-sp5"
VGGFACE2_EMBEDDER = "facenet-vggface2"
FACENET_KERAS_EMBEDDER = "facenet-keras-ms1m"
# The default: dlib's network answers first; faces it is unsure of are answered on dlib's and
# FaceNet's embeddings side by side (core.py). Enrolled samples hold both, so the name is new.
FUSED_EMBEDDER = f"{DLIB_EMBEDDER}+{FACENET_KERAS_EMBEDDER}"

# Embedders whose embeddings are two networks' side by side -> the first network's dimension:
# the part the gallery's distance thresholds (agreement, verification) are measured on.
_FIRST_LOOK_DIMS = {FUSED_EMBEDDER: 128}

# FACESITE_EMBEDDER value -> embedder name.
EMBEDDERS = {
    "dlib+facenet": FUSED_EMBEDDER,
    "dlib": DLIB_EMBEDDER,
    "vggface2": VGGFACE2_EMBEDDER,
}


def embedder_name(kind: str) -> str:
    """The name of the embedder a FACESITE_EMBEDDER value selects; ValueError if unknown."""
    try:
        return EMBEDDERS[kind]
    except KeyError:
        choices = ", ".join(repr(key) for key in EMBEDDERS)
        raise ValueError(
            f"unknown embedder {kind!r}: FACESITE_EMBEDDER is one of {choices}"
        ) from None


def first_look_dim(embedder: str) -> int | None:
    """How many leading components of ``embedder``'s embeddings are its first network's; None
    when all of them are (a single network)."""
    return _FIRST_LOOK_DIMS.get(embedder)


def configured_embedder_name() -> str:
    """The name of the embedder selected by settings.FACESITE_EMBEDDER."""
    from django.conf import settings

    return embedder_name(settings.FACESITE_EMBEDDER)
