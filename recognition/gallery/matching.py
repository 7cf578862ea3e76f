"""The enrolled gallery as an immutable in-memory index, and its portable snapshot format.

Pure numpy on purpose: workers load a gallery from snapshot bytes without touching Django, and
the evaluate command builds scratch galleries that never reach the database.

Matching rule: a face is matched to the *identity* whose nearest enrolled sample is closest
(Euclidean distance between embeddings). That is 1-NN over samples, reported per identity, so
the top-k candidates are k distinct people rather than k photos of the same person. The best
identity's name is returned when its distance is <= threshold; beyond it the name is UNKNOWN
(the candidates are still listed, so a caller can show who came closest).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

UNKNOWN = "Unknown"

# Snapshot bytes are an .npz archive. FORMAT_TAG tells a gallery from any other npz;
# FORMAT_VERSION is bumped on every incompatible change, and readers refuse versions they do
# not know instead of guessing.
FORMAT_TAG = "facesite-gallery"
FORMAT_VERSION = 1


class GalleryFormatError(ValueError):
    """Bytes that are not a gallery snapshot this code can read."""


@dataclass(frozen=True)
class Candidate:
    name: str
    distance: float


@dataclass(frozen=True)
class Match:
    """The outcome for one face: ``name`` is UNKNOWN beyond the threshold or for an empty gallery
    (then ``distance`` is math.inf); ``candidates`` are the top-k identities, nearest first."""

    name: str
    distance: float
    candidates: list[Candidate]


class Gallery:
    """Enrolled face embeddings of one embedder, one label per sample row.

    Rows are stored grouped by label (a stable sort), which lets ``match`` take the per-identity
    minimum with one ``np.minimum.reduceat`` and makes the version independent of the order in
    which identities were enrolled.
    """

    def __init__(self, embedder: str, labels: Sequence[str], embeddings: np.ndarray) -> None:
        labels = [str(label) for label in labels]
        matrix = np.asarray(embeddings, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (samples, dim) array, got {matrix.shape}")
        if matrix.shape[0] != len(labels):
            raise ValueError(f"{len(labels)} labels for {matrix.shape[0]} embedding rows")
        if not embedder:
            raise ValueError("a gallery needs the name of the embedder that made its embeddings")
        if any(not label for label in labels):
            raise ValueError("every sample needs a non-empty label")
        if not np.isfinite(matrix).all():
            raise ValueError("embeddings contain NaN or infinite values")

        identities, label_index, counts = np.unique(
            np.asarray(labels, dtype=str), return_inverse=True, return_counts=True
        )
        order = np.argsort(label_index, kind="stable")
        matrix = np.ascontiguousarray(matrix[order])
        matrix.setflags(write=False)

        self.embedder: str = embedder
        self.labels: tuple[str, ...] = tuple(labels[i] for i in order)
        self.embeddings: np.ndarray = matrix
        self.identities: tuple[str, ...] = tuple(str(name) for name in identities)
        # Each identity's block of rows [start, stop); identities are sorted by name.
        self._stops = np.cumsum(counts)
        self._starts = self._stops - counts
        self._squared_norms = np.einsum("ij,ij->i", matrix, matrix)

    @classmethod
    def empty(cls, embedder: str) -> Gallery:
        return cls(embedder, [], np.zeros((0, 0), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"<Gallery {self.embedder} {len(self.identities)} identities, "
            f"{len(self)} samples, version {self.version[:12]}>"
        )

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @cached_property
    def version(self) -> str:
        """sha256 of the content: same embedder, labels and embeddings give the same version."""
        digest = hashlib.sha256()
        header = {
            "format": FORMAT_TAG,
            "embedder": self.embedder,
            "labels": self.labels,
            "shape": self.embeddings.shape,
        }
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(self.embeddings.astype("<f4", copy=False).tobytes())
        return digest.hexdigest()

    def _identity_distances(self, queries: np.ndarray) -> np.ndarray:
        """(queries, identities) approximate distance from each query to each identity's nearest
        sample: good for ranking, not for reporting (see _exact_distance)."""
        # ||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g: one matrix product instead of a (q, n, d)
        # difference tensor. Rounding can make it slightly negative for identical vectors.
        squared = (
            np.einsum("ij,ij->i", queries, queries)[:, None]
            + self._squared_norms[None, :]
            - 2.0 * (queries @ self.embeddings.T)
        )
        per_identity = np.minimum.reduceat(squared, self._starts, axis=1)
        return np.sqrt(np.maximum(per_identity, 0.0))

    def match(self, embeddings: np.ndarray, threshold: float, top_k: int = 3) -> list[Match]:
        """One Match per query row (a single (dim,) vector counts as one row)."""
        queries = self._queries(embeddings)
        if len(self) == 0:
            return [Match(UNKNOWN, math.inf, []) for _ in range(len(queries))]
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")

        per_identity = self._identity_distances(queries)
        k = min(top_k, per_identity.shape[1])
        matches = []
        for query, row in zip(queries, per_identity, strict=True):
            # The k nearest identities plus any tied with the k-th, so that which of several
            # equally near identities makes the cut never depends on the partition's order.
            cutoff = np.partition(row, k - 1)[k - 1]
            candidates = sorted(
                (
                    Candidate(self.identities[c], self._exact_distance(query, c))
                    for c in np.flatnonzero(row <= cutoff)
                ),
                # Equal distances fall back to the name, so ties resolve the same way every time.
                key=lambda candidate: (candidate.distance, candidate.name),
            )[:k]
            best = candidates[0]
            name = best.name if best.distance <= threshold else UNKNOWN
            matches.append(Match(name, best.distance, candidates))
        return matches

    def _exact_distance(self, query: np.ndarray, identity: int) -> float:
        """Distance to one identity's nearest sample, computed directly in float64.

        The expanded form used for ranking loses precision when two vectors nearly coincide
        (|q|^2 and |g|^2 cancel), so the few distances that are reported are recomputed.
        """
        block = self.embeddings[self._starts[identity] : self._stops[identity]]
        differences = block.astype(np.float64) - query.astype(np.float64)
        return float(np.sqrt(np.einsum("ij,ij->i", differences, differences).min()))

    def _queries(self, embeddings: np.ndarray) -> np.ndarray:
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2:
            raise ValueError(f"query embeddings must be (n, dim) or (dim,), got {queries.shape}")
        if len(self) and queries.shape[1] != self.dim:
            raise ValueError(
                f"query embeddings have {queries.shape[1]} dimensions, the {self.embedder} "
                f"gallery has {self.dim}"
            )
        return queries

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(FORMAT_TAG),
            format_version=np.array(FORMAT_VERSION, dtype=np.int64),
            embedder=np.array(self.embedder),
            labels=np.array(self.labels, dtype=str).reshape(len(self.labels)),
            embeddings=self.embeddings.astype("<f4", copy=False),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Gallery:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise GalleryFormatError("not a gallery snapshot: a bare array, not an archive")
                if "format" not in archive.files or str(archive["format"]) != FORMAT_TAG:
                    raise GalleryFormatError("not a gallery snapshot: no facesite-gallery tag")
                version = int(archive["format_version"])
                if version != FORMAT_VERSION:
                    raise GalleryFormatError(
                        f"unsupported gallery format version {version} "
                        f"(this code reads version {FORMAT_VERSION})"
                    )
                embedder = str(archive["embedder"])
                labels = [str(label) for label in archive["labels"]]
                embeddings = archive["embeddings"]
        except GalleryFormatError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise GalleryFormatError(f"not a readable gallery snapshot: {exc}") from exc
        return cls(embedder, labels, embeddings)
