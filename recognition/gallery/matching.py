"""The enrolled gallery as an immutable in-memory index, and its portable snapshot format.

Pure numpy on purpose: workers load a gallery from snapshot bytes without touching Django, and
the evaluate command builds scratch galleries that never reach the database.

Open-set rule (``identify``, what the engine answers with): the candidate is the identity whose
*mean* embedding is nearest (a mean of a few photos is a steadier picture of a person than any
one of them). It is named only when its score clears the gallery's operating point, where

    score = -d1 + MARGIN_WEIGHT * min(d2 - d1, CAP) + COHORT_WEIGHT * min(c - d1, CAP)

d1 is the distance to that mean, d2 the distance to the second-nearest identity's mean (a face
about as near two people names neither), and c the candidate's cohort distance: the mean
distance from its mean to the COHORT_SIZE nearest examples of *other* enrolled people (a person
with look-alikes in the gallery must be matched more closely). Everything comes from the
gallery; CAP is CONTEXT_CAP, and a missing reference (a one-person gallery) counts as CAP.

The operating point follows from a target false-positive identification rate (FPIR, the share
of strangers given a name) and from the gallery itself (``calibrate``): every enrolled example
is in turn a stranger to the gallery without its own person, and the threshold is the score
that a new stranger exceeds with at most the target probability (choose_operating_point).
A gallery whose embeddings are two networks' side by side also has a first look: the same
rule on the first network's part alone (``first_look``, recognition.engine.core).

``match`` keeps the older rule (nearest example, one distance threshold) for an explicitly
configured distance (FACESITE_MATCH_THRESHOLD) and for callers that want plain distances.
"""

from __future__ import annotations

import dataclasses
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
# 2: the operating point (threshold, target FPIR, how it was chosen) travels with the samples.
FORMAT_VERSION = 2

# The open-set score (module docstring). Measured on ../shared/datasets/lfw_dev with dlib's
# network: the margin and the cohort term each add 1-2 points of TPIR at FPIR 0.01 over the
# distance to the mean alone; weights of 0.5-1.5 all measure within a point of each other.
MARGIN_WEIGHT = 1.0
COHORT_WEIGHT = 1.0
COHORT_SIZE = 5
# In embedding distance units. Beyond it a face is simply "clearly nearer this person", and the
# cap keeps the score comparable between galleries of one person and of thousands.
CONTEXT_CAP = 0.3
DEFAULT_TARGET_FPIR = 0.01

# Two photos of one person are usually within dlib's same-person distance, 0.6; a face of an
# enrolment photo further than this from its person's other examples is not taken to be them.
AGREEMENT_DISTANCE = 0.6
# An enrolled example is flagged when even its nearest fellow example is further than this: a
# real photo of the person now and then lies just beyond 0.6 from all the others (0.62 seen in
# five_celebrity), another person's face lies at 0.8-0.95. A flag asks an operator to look.
DISAGREEMENT_DISTANCE = 0.7
# Without enough stranger evidence (small galleries, see prior_threshold), a face clearly nearer
# one person than anyone else must be this near their mean: stricter than dlib's 0.6
# same-person distance, which names most strangers in a 1:N search.
PRIOR_DISTANCE = 0.5


class GalleryFormatError(ValueError):
    """Bytes that are not a gallery snapshot this code can read."""


@dataclass(frozen=True)
class Candidate:
    name: str
    distance: float


@dataclass(frozen=True)
class Match:
    """The outcome for one face: ``name`` is UNKNOWN beyond the threshold or for an empty gallery
    (then ``distance`` is math.inf); ``candidates`` are the top-k identities, nearest first.
    From ``identify``: distances are to identities' means, ``score`` is the open-set score and
    ``threshold`` the operating point it was held against; from ``match`` both are None."""

    name: str
    distance: float
    candidates: list[Candidate]
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class OperatingPoint:
    """The score above which a face is named, and where it came from.

    method: "quantile" (the (1 - target) quantile of the gallery's impostor scores), "prior"
    (fewer than 1 / target - 1 impostor trials: PRIOR_DISTANCE from a lone person's mean) or
    "fixed" (given by hand).
    """

    threshold: float
    target_fpir: float
    impostors: int
    method: str
    # Share of the gallery's own impostor scores above the threshold (what it achieves there).
    impostor_fpir: float = 0.0

    def to_fields(self) -> dict:
        """The point as JSON-ready fields (snapshots carry it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_fields(cls, fields: dict) -> OperatingPoint:
        return cls(
            threshold=float(fields["threshold"]),
            target_fpir=float(fields["target_fpir"]),
            impostors=int(fields["impostors"]),
            method=str(fields["method"]),
            impostor_fpir=float(fields["impostor_fpir"]),
        )

    def explain(self) -> str:
        if self.method == "quantile":
            return (
                f"threshold {self.threshold:.4f}: {self.impostor_fpir:.2%} of {self.impostors} "
                f"impostor trials (each enrolled example against the gallery without its own "
                f"person) score above it; target FPIR {self.target_fpir:.2%}"
            )
        if self.method == "prior":
            return (
                f"threshold {self.threshold:.4f}: only {self.impostors} impostor trials, too few "
                f"to resolve a {self.target_fpir:.2%} FPIR, so the prior: the score of a face "
                f"{PRIOR_DISTANCE} from a person's mean and {CONTEXT_CAP} nearer them than "
                f"anyone else ({self.impostor_fpir:.2%} of the trials score above it)"
            )
        return f"threshold {self.threshold:.4f}, set by hand"


def open_set_scores(
    distances: np.ndarray, cohort: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best identity, d1, score) per row of ``distances`` (queries x identities: distance to
    each identity's mean), given each identity's cohort distance (nan: none). Pure function."""
    rows = np.arange(len(distances))
    if distances.shape[1] == 0:
        empty = np.zeros(len(distances))
        return rows * 0, empty + math.inf, empty - math.inf
    if distances.shape[1] > 1:
        two = np.argpartition(distances, 1, axis=1)[:, :2]
        swap = distances[rows, two[:, 0]] > distances[rows, two[:, 1]]
        two[swap] = two[swap][:, ::-1]
        best = two[:, 0]
        margin = distances[rows, two[:, 1]] - distances[rows, best]
    else:
        best = np.zeros(len(distances), dtype=np.intp)
        margin = np.full(len(distances), CONTEXT_CAP)
    nearest = distances[rows, best]
    cohort_gap = np.where(np.isnan(cohort[best]), CONTEXT_CAP, cohort[best] - nearest)
    score = (
        -nearest
        + MARGIN_WEIGHT * np.minimum(margin, CONTEXT_CAP)
        + COHORT_WEIGHT * np.minimum(cohort_gap, CONTEXT_CAP)
    )
    return best, nearest, score


def _euclidean(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(queries, references) Euclidean distances, in float64 (small galleries, exact enough)."""
    queries = queries.astype(np.float64)
    references = references.astype(np.float64)
    squared = (
        np.einsum("ij,ij->i", queries, queries)[:, None]
        + np.einsum("ij,ij->i", references, references)[None, :]
        - 2.0 * (queries @ references.T)
    )
    return np.sqrt(np.maximum(squared, 0.0))


def _foreign_neighbours(
    distances: np.ndarray, owner: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each identity (row of ``distances``: its mean to every example), its ``depth``
    nearest examples of other identities: (distances, owners), nearest first, padded with inf
    and -1 where there are fewer."""
    identities = np.arange(len(distances))
    foreign = np.where(owner[None, :] != identities[:, None], distances, np.inf)
    depth = min(depth, foreign.shape[1])
    if depth == 0:
        empty = np.zeros((len(distances), 0))
        return empty, empty.astype(np.intp)
    nearest = np.argpartition(foreign, depth - 1, axis=1)[:, :depth]
    nearest_distances = np.take_along_axis(foreign, nearest, axis=1)
    order = np.argsort(nearest_distances, axis=1, kind="stable")
    nearest = np.take_along_axis(nearest, order, axis=1)
    nearest_distances = np.take_along_axis(nearest_distances, order, axis=1)
    owners = np.where(np.isfinite(nearest_distances), owner[nearest], -1)
    return nearest_distances, owners


def _mean_of_first(distances: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per row, the mean of the first COHORT_SIZE usable entries (nan if none)."""
    rank = np.cumsum(usable, axis=1)
    taken = usable & (rank <= COHORT_SIZE)
    counts = taken.sum(axis=1)
    totals = np.where(taken, distances, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def cohort_distances(means: np.ndarray, embeddings: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Each identity's cohort distance: the mean distance from its mean to the COHORT_SIZE
    nearest examples of other identities (fewer if fewer exist; nan if none)."""
    distances, owners = _foreign_neighbours(_euclidean(means, embeddings), owner, COHORT_SIZE)
    return _mean_of_first(distances, owners >= 0)


def impostor_scores(means: np.ndarray, embeddings: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Open-set scores of every example against the gallery without its own identity: what a
    stranger to that smaller gallery would score. Nothing but the gallery goes in.

    Leaving identity k out changes the others' cohort distances only where k's examples were
    among their nearest foreign ones, so each identity keeps COHORT_SIZE + (the largest
    identity's example count) neighbours and skips k's: one distance matrix for all trials.
    """
    if len(means) < 2:
        return np.zeros(0)
    to_examples = _euclidean(means, embeddings)
    largest = int(np.bincount(owner).max())
    neighbours, neighbour_owners = _foreign_neighbours(to_examples, owner, COHORT_SIZE + largest)
    example_to_means = to_examples.T
    everyone = np.arange(len(means))
    scores = []
    for identity in everyone:
        others = everyone != identity
        usable = (neighbour_owners >= 0) & (neighbour_owners != identity)
        cohort = _mean_of_first(neighbours[others], usable[others])
        queries = example_to_means[owner == identity][:, others]
        scores.append(open_set_scores(queries, cohort)[2])
    return np.concatenate(scores)


def prior_threshold() -> float:
    """The operating point without enough impostor trials: the score of a face PRIOR_DISTANCE
    from a person's mean and a full CONTEXT_CAP nearer them than anyone else (the cohort term
    neutral). Stricter than what 80-person galleries calibrate to for 1% (about -0.27 with
    dlib's network), as a smaller gallery gives a stranger fewer people to be mistaken for."""
    return -PRIOR_DISTANCE + MARGIN_WEIGHT * CONTEXT_CAP


def choose_operating_point(impostors: np.ndarray, target_fpir: float) -> OperatingPoint:
    """The threshold for ``target_fpir`` from a gallery's impostor scores (pure function).

    The k-th highest of n impostor scores, k = floor(target * (n + 1)): a new stranger, scoring
    like one more impostor, lies above the k-th highest of n with probability k / (n + 1), which
    is at most the target. (Letting floor(target * n) of the trials through instead, as the
    first version did, gives (k + 1) / (n + 1): over 20 random lfw_dev galleries it let through
    0.97% of strangers on average, above 1% in 8 of them; this rule 0.66%, in 3.)

    That needs k >= 1, so at least 1 / target - 1 impostor trials. With fewer, the few there are
    say little either way (in a handful of people, one look-alike or one person enrolled under
    two names would decide alone), so the prior holds (prior_threshold).
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"the target FPIR must be between 0 and 1, got {target_fpir}")
    prior = prior_threshold()
    count = len(impostors)
    # (The epsilon: 0.29 * 100 is 28.999999999999996 in floating point.)
    rank = math.floor(target_fpir * (count + 1) + 1e-9)
    if rank < 1:
        threshold, method = prior, "prior"
    else:
        # Named means score > threshold: the rank-th highest lets rank - 1 impostors through.
        threshold, method = float(np.sort(impostors)[::-1][rank - 1]), "quantile"
    achieved = float((impostors > threshold).mean()) if count else 0.0
    return OperatingPoint(threshold, target_fpir, count, method, achieved)


class Gallery:
    """Enrolled face embeddings of one embedder, one label per sample row.

    Rows are stored grouped by label (a stable sort), which lets ``match`` take the per-identity
    minimum with one ``np.minimum.reduceat`` and makes the version independent of the order in
    which identities were enrolled.
    """

    def __init__(
        self,
        embedder: str,
        labels: Sequence[str],
        embeddings: np.ndarray,
        operating_point: OperatingPoint | None = None,
        first_look_points: dict[int, OperatingPoint] | None = None,
    ) -> None:
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
        self._given_operating_point = operating_point
        # first_look(dim) galleries made so far; the points a snapshot brought, to make them.
        self._first_looks: dict[int, Gallery] = {}
        self._first_look_points = dict(first_look_points or {})

    @cached_property
    def owner(self) -> np.ndarray:
        """The identity index of every row."""
        return np.repeat(np.arange(len(self.identities)), self._stops - self._starts)

    @cached_property
    def means(self) -> np.ndarray:
        """(identities, dim) mean embedding of each identity, float64. Derived from the samples
        (so a snapshot needs not carry them, and they can never disagree with them)."""
        if not len(self):
            return np.zeros((0, 0))
        sums = np.add.reduceat(self.embeddings.astype(np.float64), self._starts, axis=0)
        return sums / (self._stops - self._starts)[:, None]

    @cached_property
    def cohort(self) -> np.ndarray:
        """Each identity's cohort distance (see cohort_distances)."""
        return cohort_distances(self.means, self.embeddings, self.owner)

    @cached_property
    def operating_point(self) -> OperatingPoint:
        """The given operating point, else one calibrated for DEFAULT_TARGET_FPIR."""
        if self._given_operating_point is not None:
            return self._given_operating_point
        return calibrate(self, DEFAULT_TARGET_FPIR)

    def calibrated(self, target_fpir: float) -> Gallery:
        """This gallery with the operating point for ``target_fpir`` (a new object)."""
        return Gallery(self.embedder, self.labels, self.embeddings, calibrate(self, target_fpir))

    def first_look(self, dim: int) -> Gallery:
        """The gallery of every sample's first ``dim`` components (the first network's part of
        an embedding made by two side by side), calibrated for the same target FPIR: what the
        engine's first look answers against (recognition.engine.core). Computed once."""
        if dim == self.dim or not len(self):
            return self
        if dim not in self._first_looks:
            point = self._first_look_points.get(dim)
            part = Gallery(self.embedder, self.labels, self.embeddings[:, :dim], point)
            if point is None:
                target = self.operating_point.target_fpir
                # A hand-set point says nothing about the part's scale: the default target.
                part = part.calibrated(target if math.isfinite(target) else DEFAULT_TARGET_FPIR)
            self._first_looks[dim] = part
        return self._first_looks[dim]

    def with_threshold(self, threshold: float) -> Gallery:
        """This gallery with a hand-set score threshold (evaluate's curve, tests)."""
        point = OperatingPoint(float(threshold), math.nan, 0, "fixed")
        return Gallery(self.embedder, self.labels, self.embeddings, point)

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
        # The operating point is part of what workers serve: another threshold, another version.
        digest.update(json.dumps(self.operating_point.to_fields(), sort_keys=True).encode())
        return digest.hexdigest()

    def scores(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(best identity index, distance to its mean, open-set score) per query row."""
        queries = self._queries(embeddings)
        if len(self) == 0:
            return open_set_scores(np.zeros((len(queries), 0)), np.zeros(0))
        return open_set_scores(_euclidean(queries, self.means), self.cohort)

    def identify(self, embeddings: np.ndarray, top_k: int = 3) -> list[Match]:
        """The open-set answer for each query row: the identity with the nearest mean, named
        when its score clears the operating point; candidates by distance to their means."""
        queries = self._queries(embeddings)
        if len(self) == 0:
            return [Match(UNKNOWN, math.inf, []) for _ in range(len(queries))]
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        distances = _euclidean(queries, self.means)
        best, nearest, score = open_set_scores(distances, self.cohort)
        threshold = self.operating_point.threshold
        k = min(top_k, len(self.identities))
        matches = []
        for row, identity, distance, value in zip(distances, best, nearest, score, strict=True):
            order = np.lexsort((np.arange(len(row)), row))[:k]
            candidates = [Candidate(self.identities[c], float(row[c])) for c in order]
            name = self.identities[identity] if value > threshold else UNKNOWN
            matches.append(Match(name, float(distance), candidates, float(value), threshold))
        return matches

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
            operating_point=np.array(json.dumps(self.operating_point.to_fields(), sort_keys=True)),
            # The first looks made so far (publish_snapshot makes the embedder's): a worker
            # need not calibrate them again. Derived from the rest, so not part of the version.
            first_looks=np.array(
                json.dumps(
                    {
                        str(dim): gallery.operating_point.to_fields()
                        for dim, gallery in self._first_looks.items()
                    },
                    sort_keys=True,
                )
            ),
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
                point = OperatingPoint.from_fields(json.loads(str(archive["operating_point"])))
                first_looks = (
                    {
                        int(dim): OperatingPoint.from_fields(fields)
                        for dim, fields in json.loads(str(archive["first_looks"])).items()
                    }
                    if "first_looks" in archive.files
                    else {}
                )
        except GalleryFormatError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise GalleryFormatError(f"not a readable gallery snapshot: {exc}") from exc
        return cls(embedder, labels, embeddings, point, first_looks)


def calibrate(gallery: Gallery, target_fpir: float) -> OperatingPoint:
    """The operating point for ``target_fpir`` from the gallery's own impostor trials."""
    if not len(gallery):
        return choose_operating_point(np.zeros(0), target_fpir)
    impostors = impostor_scores(gallery.means, gallery.embeddings, gallery.owner)
    return choose_operating_point(impostors, target_fpir)


def choose_face(
    embeddings: np.ndarray, reference: np.ndarray | None, dims: int | None = None
) -> tuple[int, str]:
    """Which of an enrolment photo's faces (rows of ``embeddings``, largest first) is the
    person, and why: the face nearest the mean of the person's other examples when it is within
    AGREEMENT_DISTANCE of it, else the largest. Distances over the first ``dims`` components
    (the first network's, recognition.engine.names.first_look_dim; None: all). Pure function."""
    count = len(embeddings)
    if reference is None:
        return 0, f"{count} faces, used the largest (no other example of this person decides)"
    gaps = embeddings.astype(np.float64)[:, :dims] - np.asarray(reference)[:dims]
    distances = np.linalg.norm(gaps, axis=1)
    nearest = int(np.argmin(distances))
    if distances[nearest] > AGREEMENT_DISTANCE:
        return 0, (
            f"{count} faces, used the largest (none agrees with this person's other "
            f"examples: the nearest is {distances[nearest]:.2f} away)"
        )
    if nearest == 0:
        return 0, (
            f"{count} faces, used the largest, which agrees with this person's other "
            f"examples ({distances[0]:.2f})"
        )
    return nearest, (
        f"{count} faces, used face {nearest + 1} by size: it agrees with this person's other "
        f"examples ({distances[nearest]:.2f}; the largest is {distances[0]:.2f} away)"
    )


def disagreeing_examples(
    labels: list[str], embeddings: np.ndarray, dims: int | None = None
) -> np.ndarray:
    """Which examples are likely someone else: further than DISAGREEMENT_DISTANCE from every
    other example of their person (unlike any of them; a mean would be dragged by the odd one out).
    A person needs three examples for this to mean anything (with two, neither can be told
    wrong). Distances over the first ``dims`` components, as choose_face. Pure function: (n,)
    bool."""
    flags = np.zeros(len(labels), dtype=bool)
    if not len(labels):
        return flags
    matrix = np.asarray(embeddings, dtype=np.float64)[:, :dims]
    names = np.asarray(labels, dtype=str)
    for name in np.unique(names):
        rows = np.flatnonzero(names == name)
        if len(rows) < 3:
            continue
        distances = _euclidean(matrix[rows], matrix[rows])
        np.fill_diagonal(distances, np.inf)
        flags[rows] = distances.min(axis=1) > DISAGREEMENT_DISTANCE
    return flags
