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

# FACESITE_EMBEDDER value -> embedder name.
EMBEDDERS = {"dlib": DLIB_EMBEDDER, "vggface2": VGGFACE2_EMBEDDER}


def embedder_name(kind: str) -> str:
    """The name of the embedder a FACESITE_EMBEDDER value selects; ValueError if unknown."""
    try:
        return EMBEDDERS[kind]
    except KeyError:
        choices = ", ".join(repr(key) for key in EMBEDDERS)
        raise ValueError(
            f"unknown embedder {kind!r}: FACESITE_EMBEDDER is one of {choices}"
        ) from None


def configured_embedder_name() -> str:
    """The name of the embedder selected by settings.FACESITE_EMBEDDER."""
    from django.conf import settings

    return embedder_name(settings.FACESITE_EMBEDDER)
