"""The upload's stages as metrics: each answered upload's history timestamps, observed once, by
the web process that answered it (facesite.metrics.STAGE_SECONDS)."""

from datetime import datetime

from facesite.metrics import STAGE_SECONDS
from recognition.models import UploadRequest


def stage_durations(row: UploadRequest, replied_at: datetime) -> dict[str, float]:
    """Seconds spent in each stage whose two ends are recorded. The worker's clock stamps
    started/finished, so a stage across machines is clamped at zero rather than negative."""
    stages = (
        ("store", row.received_at, row.stored_at),
        ("queue", row.stored_at, row.queued_at),
        # A worker may start before the web tier has recorded queued_at: waiting starts at
        # stored_at then, the last moment known to precede the task.
        ("wait", row.queued_at or row.stored_at, row.started_at),
        ("recognise", row.started_at, row.finished_at),
        ("reply", row.finished_at, replied_at),
    )
    return {
        stage: max(0.0, (end - start).total_seconds())
        for stage, start, end in stages
        if start is not None and end is not None
    }


def observe_stages(row: UploadRequest, replied_at: datetime) -> None:
    for stage, seconds in stage_durations(row, replied_at).items():
        STAGE_SECONDS.labels(stage).observe(seconds)
