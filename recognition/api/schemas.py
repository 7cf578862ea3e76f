"""The shapes of the API's bodies, as the OpenAPI schema documents them (DESIGN.md's table)."""

from __future__ import annotations

from datetime import datetime

from ninja import Schema


class ErrorDetail(Schema):
    code: str
    message: str
    request_id: str | None = None


class ErrorOut(Schema):
    error: ErrorDetail


class CandidateOut(Schema):
    subject: str
    distance: float | None


class RecognizedFace(Schema):
    box: list[float]  # [x1, y1, x2, y2], pixels of the image after EXIF rotation
    score: float  # detection probability
    name: str  # "Unknown" beyond the threshold
    distance: float | None  # to the nearest subject; null for an empty gallery
    candidates: list[CandidateOut]  # per subject, nearest first


class RecognizeOut(Schema):
    request_id: str
    name: str  # the largest face's
    faces: list[RecognizedFace]  # largest first
    timings_ms: dict[str, float]  # the engine's stages: decode, detect, align, embed, match


class DetectedFace(Schema):
    box: list[float]
    score: float
    landmarks: list[list[float]]  # 5 x [x, y]: eyes, nose, mouth corners


class DetectOut(Schema):
    request_id: str
    faces: list[DetectedFace]
    timings_ms: dict[str, float]


class VerifyOut(Schema):
    request_id: str
    match: bool
    distance: float | None
    threshold: float


class SubjectIn(Schema):
    name: str


class SubjectSummary(Schema):
    name: str
    examples: int


class SubjectList(Schema):
    subjects: list[SubjectSummary]


class ExampleOut(Schema):
    id: int
    source: str
    created_at: datetime


class SubjectOut(Schema):
    name: str
    examples: list[ExampleOut]


class AddedExample(Schema):
    id: int
    source: str
    faces: int  # faces found in the image
    note: str  # which face was enrolled, when there were several


class RefusedExample(Schema):
    source: str
    code: str
    message: str


class ExamplesOut(Schema):
    added: list[AddedExample]
    refused: list[RefusedExample]
