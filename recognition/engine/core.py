"""The engine: one object that turns a photo into recognised faces, shared by every caller
(workers, the enroll/recognize/evaluate commands, tests, benchmarks).

Pipeline: decode (imaging) -> detect (MTCNN, on a bounded-size copy) -> prepare each face for
the embedder (align or crop, at full resolution) -> embed all faces of the image in one batch
-> match against a gallery -> a second look at the doubtful faces.

The second look (open-set rule only): a face whose score lies within a band around the
gallery's operating point (SECOND_LOOK_BAND; SECOND_OPINION_BAND when the second opinion is
asked) is looked at again; confident accepts and rejects cost nothing extra.
- With a second opinion (FACESITE_EMBEDDER=dlib+facenet, the default), gallery samples hold
  both networks' embeddings side by side ([dlib, FUSION_WEIGHT * FaceNet], each averaged with
  its mirror image). The first look matches the dlib part against the gallery's first-look
  operating point; a doubtful face is embedded by FaceNet too (and its dlib embedding averaged
  with its mirror image), and the pair is matched against the whole gallery, at the operating
  point calibrated on both. A gallery too small to calibrate (its operating point is the prior,
  which is in dlib's units) is answered by dlib's part alone. lfw_dev (80 people enrolled with
  3 photos, 386 known probes, 600 strangers) through evaluate: TPIR 0.920 -> 0.964 and FPIR
  0.005 -> 0.007 at the self-chosen points, with FaceNet run on about 10% of the faces. FaceNet
  costs about four dlib looks a face, which is why it does not run on every face.
- Without one, the doubtful face's embedding is averaged with its mirror image's, as enrolment
  does for every example, and matched again (lfw_dev: TPIR at FPIR 0.01 0.925 -> 0.946).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from facesite.config import FacesiteConfig

from .detection import Detection, FaceDetector
from .embedders import Embedder, load_embedders
from .imaging import ImageSource, decode_scale, load_image, prepare_image, to_rgb
from .results import Face, FaceResult, Recognition

if TYPE_CHECKING:
    from recognition.gallery.matching import Gallery, Match

logger = logging.getLogger(__name__)

# One source for every default: the configuration's (an engine built outside Django gets them).
DEFAULT_MAX_PIXELS: int = FacesiteConfig.model_fields["max_pixels"].default
DEFAULT_DETECT_MAX_SIDE: int = FacesiteConfig.model_fields["detect_max_side"].default
DEFAULT_TOP_K: int = FacesiteConfig.model_fields["top_k"].default

# (below, above) the operating point, in open-set score units (recognition.gallery.matching).
# Averaging in the mirror image moves a face's score by 0.02 (median), 0.07 (90%) and 0.12 (99%)
# over the 121 faces of five_celebrity (bench/second_look.py): beyond 0.1 a face almost never
# changes its answer that way.
SECOND_LOOK_BAND = (0.1, 0.1)
# With the second opinion: FaceNet rescues known faces from further below. On lfw_dev, reaching
# 0.15 below gives TPIR 0.966 against 0.953 for 0.1, for 3.5% more faces looked at twice;
# strangers named by the first look lie within 0.1 above.
SECOND_OPINION_BAND = (0.15, 0.1)
# The second opinion's share of a fused embedding, [dlib, FUSION_WEIGHT * FaceNet]: on lfw_dev
# weights 0.6-1.0 measure within a probe of each other; 0.8 kept strangers' FPIR nearest its
# target over ten random galleries. Part of what a sample holds: a change needs a new name.
FUSION_WEIGHT = 0.8


class Engine:
    """Detect, embed and match faces. Thread-safe: it holds no per-call state, and inference
    runs under torch.inference_mode(), so one engine can serve concurrent requests."""

    def __init__(
        self,
        detector: FaceDetector,
        embedder: Embedder,
        threshold: float | None = None,
        top_k: int = DEFAULT_TOP_K,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        second_look_band: tuple[float, float] = SECOND_LOOK_BAND,
        second_opinion: Embedder | None = None,
        second_opinion_band: tuple[float, float] = SECOND_OPINION_BAND,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.detector = detector
        self.embedder = embedder
        self.second_opinion = second_opinion
        self.embedder_name: str = (
            f"{embedder.name}+{second_opinion.name}" if second_opinion else embedder.name
        )
        # None: every answer uses the gallery's own calibrated operating point (the open-set
        # rule of recognition.gallery). A number: the older rule, nearest example within this
        # distance, for an operator who sets FACESITE_MATCH_THRESHOLD on purpose.
        # The open-set score's constants are in dlib's distance units; another embedder keeps
        # the older rule at its own threshold until it is measured.
        if threshold is None and not getattr(embedder, "open_set", False):
            threshold = embedder.default_threshold
        self.threshold: float | None = threshold
        self.top_k: int = top_k
        self.max_pixels: int = max_pixels
        # (0, 0) turns the second look off (module docstring).
        for band in (second_look_band, second_opinion_band):
            if min(band) < 0:
                raise ValueError(f"a second-look band must be >= 0 both ways, got {band}")
        self.second_look_band: tuple[float, float] = second_look_band
        self.second_opinion_band: tuple[float, float] = second_opinion_band

    def __repr__(self) -> str:
        return f"<Engine {self.embedder_name} threshold={self.threshold} top_k={self.top_k}>"

    def faces(self, image: Image.Image, mirror: bool = False) -> list[Face]:
        """Every face in ``image`` (a decoded PIL image; non-RGB modes are converted), largest
        first, each with its embedding (both networks', with a second opinion). ``mirror``:
        average each face's embedding with its mirror image's (steadier, for enrolment; it
        doubles the network's work, which recognition cannot afford within its speed budget)."""
        return self._faces(to_rgb(image), {}, mirror, fused=True)[0]

    def embed_image(
        self, source: ImageSource | Image.Image, mirror: bool = False, fused: bool = True
    ) -> list[Face]:
        """Decode ``source`` (raising ImageError subclasses) and return ``faces()`` of it;
        ``fused=False``: the first network's embeddings alone (its distances, no second
        opinion's work)."""
        return self._faces(self._decode(source), {}, mirror, fused=fused)[0]

    def recognize(
        self,
        source: ImageSource | Image.Image,
        gallery: Gallery,
        top_k: int | None = None,
    ) -> Recognition:
        """Decode, find and embed every face, and match each against ``gallery``. The answer
        (``name``, ``distance``) is the match of the largest face. With a second opinion, a
        face's embedding is the first network's alone unless its second look ran."""
        if gallery.embedder != self.embedder_name:
            # Distances between two networks' embeddings mean nothing: refuse, don't guess.
            raise ValueError(
                f"the gallery holds {gallery.embedder} embeddings, this engine makes "
                f"{self.embedder_name} embeddings"
            )
        started = time.perf_counter()
        timings: dict[str, float] = {}
        image = self._decode(source)
        timings["decode"] = time.perf_counter() - started
        faces, chips, detections = self._faces(image, timings)

        matched = time.perf_counter()
        results: list[FaceResult] = []
        timings["second_look"] = 0.0
        if faces:
            embeddings = np.stack([face.embedding for face in faces])
            k = self.top_k if top_k is None else top_k
            first_look = gallery.first_look(self.embedder.dim) if self.second_opinion else gallery
            if self.threshold is None:
                matches = first_look.identify(embeddings, k)
                looked_at = Looked(image, faces, chips, detections)
                fused = self.fuses(gallery)
                faces, matches = self._second_look(
                    looked_at, matches, gallery if fused else first_look, fused, k, timings
                )
            else:
                matches = first_look.match(embeddings, self.threshold, k)
            results = [FaceResult(face, match) for face, match in zip(faces, matches, strict=True)]
        timings["match"] = time.perf_counter() - matched - timings["second_look"]
        timings["total"] = time.perf_counter() - started
        largest = results[0].match if results else None
        return Recognition(
            faces=results,
            name=largest.name if largest else None,
            distance=largest.distance if largest else None,
            timings=timings,
        )

    def fuses(self, gallery: Gallery) -> bool:
        """Whether doubtful faces get the second opinion against ``gallery``: when the engine
        has one and the gallery's operating point was calibrated. The prior (too few impostor
        trials) is in the first network's units (matching.PRIOR_DISTANCE) and cannot hold a
        score on both networks: such a small gallery is answered by the first network alone."""
        return self.second_opinion is not None and gallery.operating_point.method != "prior"

    def doubtful(self, matches: list[Match], fused: bool = False) -> list[int]:
        """Indices of the matches whose open-set score lies within the second-look band of
        their operating point, the second opinion's when ``fused`` (none for an empty gallery
        or with the band off)."""
        below, above = self.second_opinion_band if fused else self.second_look_band
        return [
            index
            for index, match in enumerate(matches)
            if match.score is not None
            and match.threshold is not None
            and -below <= match.score - match.threshold <= above
        ]

    def _second_look(
        self,
        looked_at: Looked,
        matches: list[Match],
        gallery: Gallery,
        fused: bool,
        top_k: int,
        timings: dict[str, float],
    ) -> tuple[list[Face], list[Match]]:
        """Faces and matches with each doubtful face embedded again and matched again against
        ``gallery`` (module docstring): with the second opinion when ``fused``; the others
        unchanged."""
        faces = looked_at.faces
        doubtful = self.doubtful(matches, fused)
        if not doubtful:
            return faces, matches
        started = time.perf_counter()
        with torch.inference_mode():
            mirror_images = np.ascontiguousarray(looked_at.chips[doubtful][:, :, ::-1])
            mirrored = self.embedder.embed(mirror_images)
        embeddings = (np.stack([faces[i].embedding for i in doubtful]) + mirrored) / 2
        if fused:
            detections = [looked_at.detections[i] for i in doubtful]
            embeddings = self._fused(embeddings, looked_at.image, detections, mirror=False)
        timings["second_look"] = time.perf_counter() - started
        faces, matches = list(faces), list(matches)
        again = gallery.identify(embeddings, top_k)
        for index, embedding, match in zip(doubtful, embeddings, again, strict=True):
            embedding = embedding.astype(np.float32)
            embedding.setflags(write=False)
            faces[index] = dataclasses.replace(faces[index], embedding=embedding)
            matches[index] = match
        return faces, matches

    def _fused(
        self,
        first: np.ndarray,
        image: Image.Image,
        detections: list[Detection],
        mirror: bool,
    ) -> np.ndarray:
        """The first network's embeddings with the second opinion's beside them."""
        assert self.second_opinion is not None
        with torch.inference_mode():
            crops = np.stack([self.second_opinion.prepare(image, d) for d in detections])
            second = self.second_opinion.embed(crops, mirror)
        return np.concatenate([first, FUSION_WEIGHT * second], axis=1).astype(np.float32)

    def _decode(self, source: ImageSource | Image.Image) -> Image.Image:
        if isinstance(source, Image.Image):
            return prepare_image(source, self.max_pixels)
        return load_image(source, self.max_pixels)

    def _faces(
        self,
        image: Image.Image,
        timings: dict[str, float],
        mirror: bool = False,
        fused: bool = False,
    ) -> tuple[list[Face], np.ndarray, list[Detection]]:
        """faces() with the first network's input for each and the detections (for the second
        look), recording detect/align/embed seconds into ``timings``. ``fused``: with the
        second opinion's embeddings beside the first network's, when the engine has one."""
        global _parallel_inference_ran
        if not _parallel_inference_ran and torch.get_num_threads() > 1:
            _parallel_inference_ran = True
        with torch.inference_mode():
            started = time.perf_counter()
            detections = self.detector.detect(image)
            detected = time.perf_counter()
            chips = (
                np.stack([self.embedder.prepare(image, detection) for detection in detections])
                if detections
                else np.zeros((0, 0, 0, 3), dtype=np.uint8)
            )
            aligned = time.perf_counter()
            embeddings = self.embedder.embed(chips, mirror) if len(chips) else np.zeros((0, 0))
            if fused and self.second_opinion is not None and len(chips):
                embeddings = self._fused(embeddings, image, detections, mirror)
            embedded = time.perf_counter()
        timings.update(
            detect=detected - started, align=aligned - detected, embed=embedded - aligned
        )
        # Boxes and landmarks in the original image's pixels, even when it was decoded smaller.
        scale = decode_scale(image)
        faces = []
        for detection, embedding in zip(detections, embeddings, strict=True):
            landmarks = detection.landmarks * scale
            landmarks.setflags(write=False)
            embedding = np.array(embedding, dtype=np.float32)
            embedding.setflags(write=False)
            faces.append(
                Face(
                    box=tuple(float(v) * scale for v in detection.box),  # type: ignore[arg-type]
                    probability=detection.probability,
                    landmarks=landmarks,
                    embedding=embedding,
                )
            )
        return faces, chips, detections


@dataclasses.dataclass(frozen=True)
class Looked:
    """What the first look at an image made, kept for the second look."""

    image: Image.Image
    faces: list[Face]
    chips: np.ndarray
    detections: list[Detection]


def load_engine(
    embedder: str = "dlib+facenet",
    *,
    threshold: float | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    detect_max_side: int = DEFAULT_DETECT_MAX_SIDE,
    threads: int = 0,
) -> Engine:
    """Build a new engine (models loaded now). ``embedder`` is a FACESITE_EMBEDDER value;
    ``threshold`` None means the gallery's calibrated open-set rule, a number the nearest
    example within that distance; ``threads`` > 0 sets torch's intra-op
    thread count for the whole process (torch has no per-model setting)."""
    target_threads = threads if threads > 0 else torch.get_num_threads()
    # Load on one thread: the loading process never starts OpenMP's thread pool, so it can fork
    # workers that use every thread (see _after_fork_in_child).
    torch.set_num_threads(1)
    try:
        embedder_model, second_opinion = load_embedders(embedder)
        detector = FaceDetector(detect_max_side)
    finally:
        torch.set_num_threads(target_threads)
    return Engine(
        detector,
        embedder_model,
        threshold=threshold,
        top_k=top_k,
        max_pixels=max_pixels,
        second_opinion=second_opinion,
    )


# Set once this process has run inference on more than one thread (OpenMP's pool is started).
_parallel_inference_ran = False


def _after_fork_in_child() -> None:
    """GNU OpenMP, torch's CPU thread pool, does not survive fork(): a child whose parent had
    started the pool deadlocks in its first parallel operation. Such a child runs on one thread
    instead (slower, but alive). A parent that only loaded the engine never started the pool
    (load_engine works single-threaded), so its children keep their full thread count."""
    if _parallel_inference_ran:
        torch.set_num_threads(1)
        logger.warning(
            "face engine: this process was forked after its parent ran multi-threaded "
            "inference, so it runs on one thread; warm up in the parent with "
            "FACESITE_ENGINE_THREADS=1, or load without running inference before forking"
        )


os.register_at_fork(after_in_child=_after_fork_in_child)


_engine: Engine | None = None
# Guards the first load only: callers on several threads must not load the models twice.
_engine_lock = threading.Lock()


def get_engine() -> Engine:
    """The process's engine, built from Django settings on first use."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = _engine_from_settings()
    return _engine


def _engine_from_settings() -> Engine:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return load_engine(
            settings.FACESITE_EMBEDDER,
            threshold=settings.FACESITE_MATCH_THRESHOLD,
            top_k=settings.FACESITE_TOP_K,
            max_pixels=settings.FACESITE_MAX_PIXELS,
            detect_max_side=settings.FACESITE_DETECT_MAX_SIDE,
            threads=settings.FACESITE_ENGINE_THREADS,
        )
    except ValueError as exc:  # an unknown embedder, top_k < 1, a too small detect size
        raise ImproperlyConfigured(str(exc)) from exc
