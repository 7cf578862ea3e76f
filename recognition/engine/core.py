"""The engine: one object that turns a photo into recognised faces, shared by every caller
(workers, the enroll/recognize/evaluate commands, tests, benchmarks).

Pipeline: decode (imaging) -> detect (MTCNN, on a bounded-size copy) -> prepare each face for
the embedder (align or crop, at full resolution) -> embed all faces of the image in one batch
-> match against a gallery -> a second look at the doubtful faces.

The second look (open-set rule only): a face whose score lies within SECOND_LOOK_BAND of the
gallery's operating point is embedded once more from its mirror image, the two embeddings are
averaged (as enrolment does for every example) and the face is matched again. Averaging with
the mirror image makes an embedding steadier (lfw_dev through evaluate: TPIR at FPIR 0.01 0.925
without, 0.946 with the second look; at the self-calibrated point 0.915 -> 0.920); but mirroring
every face would double the network's work, while only faces near the threshold can change
their answer. Confident accepts and rejects cost nothing extra.
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

from .detection import FaceDetector
from .embedders import Embedder, load_embedder
from .imaging import ImageSource, decode_scale, load_image, prepare_image, to_rgb
from .results import Face, FaceResult, Recognition

if TYPE_CHECKING:
    from recognition.gallery.matching import Gallery, Match

logger = logging.getLogger(__name__)

# One source for every default: the configuration's (an engine built outside Django gets them).
DEFAULT_MAX_PIXELS: int = FacesiteConfig.model_fields["max_pixels"].default
DEFAULT_DETECT_MAX_SIDE: int = FacesiteConfig.model_fields["detect_max_side"].default
DEFAULT_TOP_K: int = FacesiteConfig.model_fields["top_k"].default

# In open-set score units (recognition.gallery.matching). Averaging in the mirror image moves a
# face's score by 0.02 (median), 0.07 (90%) and 0.12 (99%) over the 121 faces of five_celebrity
# (bench/second_look.py), so a face further than this from the operating point almost never
# changes its answer. On lfw_dev (not used to choose it) this band mirrors 7% of the probes and
# gets all the gain of mirroring every one (TPIR at FPIR 0.01: 0.917 plain, 0.943 both ways).
SECOND_LOOK_BAND = 0.1


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
        second_look_band: float = SECOND_LOOK_BAND,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.detector = detector
        self.embedder = embedder
        self.embedder_name: str = embedder.name
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
        # 0 turns the second look off (module docstring).
        if second_look_band < 0:
            raise ValueError(f"second_look_band must be >= 0, got {second_look_band}")
        self.second_look_band: float = second_look_band

    def __repr__(self) -> str:
        return f"<Engine {self.embedder_name} threshold={self.threshold} top_k={self.top_k}>"

    def faces(self, image: Image.Image, mirror: bool = False) -> list[Face]:
        """Every face in ``image`` (a decoded PIL image; non-RGB modes are converted), largest
        first, each with its embedding. ``mirror``: average each face's embedding with its
        mirror image's (steadier, for enrolment; it doubles the network's work, which
        recognition cannot afford within its speed budget)."""
        return self._faces(to_rgb(image), {}, mirror)[0]

    def embed_image(self, source: ImageSource | Image.Image, mirror: bool = False) -> list[Face]:
        """Decode ``source`` (raising ImageError subclasses) and return ``faces()`` of it."""
        return self._faces(self._decode(source), {}, mirror)[0]

    def recognize(
        self,
        source: ImageSource | Image.Image,
        gallery: Gallery,
        top_k: int | None = None,
    ) -> Recognition:
        """Decode, find and embed every face, and match each against ``gallery``. The answer
        (``name``, ``distance``) is the match of the largest face."""
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
        faces, chips = self._faces(image, timings)

        matched = time.perf_counter()
        results: list[FaceResult] = []
        timings["second_look"] = 0.0
        if faces:
            embeddings = np.stack([face.embedding for face in faces])
            k = self.top_k if top_k is None else top_k
            if self.threshold is None:
                matches = gallery.identify(embeddings, k)
                faces, matches = self._second_look(faces, chips, matches, gallery, k, timings)
            else:
                matches = gallery.match(embeddings, self.threshold, k)
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

    def doubtful(self, matches: list[Match]) -> list[int]:
        """Indices of the matches whose open-set score lies within the second-look band of
        their operating point (none for an empty gallery or with the band off)."""
        return [
            index
            for index, match in enumerate(matches)
            if match.score is not None
            and match.threshold is not None
            and abs(match.score - match.threshold) <= self.second_look_band
        ]

    def _second_look(
        self,
        faces: list[Face],
        chips: np.ndarray,
        matches: list[Match],
        gallery: Gallery,
        top_k: int,
        timings: dict[str, float],
    ) -> tuple[list[Face], list[Match]]:
        """Faces and matches with each doubtful face's embedding averaged with its mirror
        image's and matched again (module docstring); the others unchanged."""
        doubtful = self.doubtful(matches)
        if not doubtful:
            return faces, matches
        started = time.perf_counter()
        with torch.inference_mode():
            mirrored = self.embedder.embed(np.ascontiguousarray(chips[doubtful][:, :, ::-1]))
        averaged = (np.stack([faces[i].embedding for i in doubtful]) + mirrored) / 2
        timings["second_look"] = time.perf_counter() - started
        faces, matches = list(faces), list(matches)
        again = gallery.identify(averaged, top_k)
        for index, embedding, match in zip(doubtful, averaged, again, strict=True):
            embedding = embedding.astype(np.float32)
            embedding.setflags(write=False)
            faces[index] = dataclasses.replace(faces[index], embedding=embedding)
            matches[index] = match
        return faces, matches

    def _decode(self, source: ImageSource | Image.Image) -> Image.Image:
        if isinstance(source, Image.Image):
            return prepare_image(source, self.max_pixels)
        return load_image(source, self.max_pixels)

    def _faces(
        self, image: Image.Image, timings: dict[str, float], mirror: bool = False
    ) -> tuple[list[Face], np.ndarray]:
        """faces() and the network's input for each (for the second look), recording
        detect/align/embed seconds into ``timings``."""
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
        return faces, chips


def load_engine(
    embedder: str = "dlib",
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
        embedder_model = load_embedder(embedder)
        detector = FaceDetector(detect_max_side)
    finally:
        torch.set_num_threads(target_threads)
    return Engine(
        detector,
        embedder_model,
        threshold=threshold,
        top_k=top_k,
        max_pixels=max_pixels,
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
