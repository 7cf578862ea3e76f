"""What the engine returns. numpy only, so importing these costs nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recognition.gallery.matching import Match


# eq=False: the fields include numpy arrays, for which the generated __eq__ would be ambiguous
# and the generated __hash__ would fail; faces compare (and hash) by identity instead.
@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixels: box (x1, y1, x2, y2), detection probability, the five
    landmarks (5, 2) (left eye, right eye, nose, mouth left, mouth right) and its embedding."""

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray
    embedding: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True, eq=False)
class FaceResult:
    face: Face
    match: Match


@dataclass
class Recognition:
    """Every face (largest first) with its match; ``name``/``distance`` answer for the largest
    face and are None when there is no face. ``timings`` are seconds per step: decode, detect,
    align, embed, match, second_look (the mirror-image embedding of doubtful faces), total."""

    faces: list[FaceResult]
    name: str | None
    distance: float | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def has_face(self) -> bool:
        return bool(self.faces)
