"""What the dashboard shows, as one JSON document: the fleet and the queues over the last
minutes (the scaler's observations), uploads per second and reply latency (the request
history), the latest scaling decisions with their reasons, and the latest failures.

Everything comes from the database, which every web machine shares: any machine's dashboard
shows the whole service, not one process's share of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Q

from operations.collector import INSTANCE_FIELDS, QUEUE_FIELDS
from recognition.models import UploadRequest
from scaler.models import FleetObservation, ScalingEvent

WINDOW_SECONDS = 600  # how far back the charts go
BUCKET_SECONDS = 10  # one point of the rate and latency charts
LATENCY_SECONDS = 60  # the current p50/p95 are over replies in this last span
RECENT_ROWS = 12  # scaling decisions and failures listed


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None for none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def _epoch(moment: datetime) -> float:
    return round(moment.timestamp(), 3)


def fleet_series(since: datetime) -> dict[str, list]:
    fields = [field for _, field in INSTANCE_FIELDS] + [field for *_, field in QUEUE_FIELDS]
    rows = FleetObservation.objects.filter(at__gte=since).order_by("at").values("at", *fields)
    series: dict[str, list] = {"t": [], **{field: [] for field in fields}}
    for row in rows:
        series["t"].append(_epoch(row["at"]))
        for field in fields:
            series[field].append(row[field])
    return series


def upload_series(since: datetime, now: datetime) -> dict[str, Any]:
    """Uploads per second and p50/p95 reply latency per bucket, and their current values."""
    rows = UploadRequest.objects.filter(received_at__gte=since).values_list(
        "received_at", "replied_at"
    )
    start = since.timestamp()
    buckets = max(1, math.ceil((now.timestamp() - start) / BUCKET_SECONDS))
    arrivals = [0] * buckets
    latencies: list[list[float]] = [[] for _ in range(buckets)]
    recent: list[float] = []
    recent_since = now - timedelta(seconds=LATENCY_SECONDS)
    for received_at, replied_at in rows:
        arrivals[min(buckets - 1, int((received_at.timestamp() - start) // BUCKET_SECONDS))] += 1
        if replied_at is None:
            continue
        seconds = (replied_at - received_at).total_seconds()
        index = int((replied_at.timestamp() - start) // BUCKET_SECONDS)
        if 0 <= index < buckets:
            latencies[index].append(seconds)
        if replied_at >= recent_since:
            recent.append(seconds)
    for bucket in latencies:
        bucket.sort()
    recent.sort()
    # The last bucket is still filling: its rate is over the part that has passed.
    last_span = now.timestamp() - (start + (buckets - 1) * BUCKET_SECONDS)
    spans = [BUCKET_SECONDS] * (buckets - 1) + [max(1.0, last_span)]
    return {
        "t": [round(start + (i + 1) * BUCKET_SECONDS, 3) for i in range(buckets)],
        "per_second": [round(count / span, 3) for count, span in zip(arrivals, spans, strict=True)],
        "p50": [percentile(bucket, 0.50) for bucket in latencies],
        "p95": [percentile(bucket, 0.95) for bucket in latencies],
        "now": {
            "per_second": round(arrivals[-1] / spans[-1], 3),
            "p50": percentile(recent, 0.50),
            "p95": percentile(recent, 0.95),
            "replies": len(recent),
        },
    }


def scaling_decisions() -> list[dict[str, Any]]:
    return [
        {
            "at": _epoch(event.at),
            "action": event.action,
            "result": event.result,
            "instances": event.instance_names or event.instance_ids,
            "reason": event.reason,
            "detail": event.detail,
        }
        for event in ScalingEvent.objects.order_by("-at", "-id")[:RECENT_ROWS]
    ]


def failures() -> list[dict[str, Any]]:
    """Uploads that failed or were answered with a server error or a timeout, newest first."""
    rows = UploadRequest.objects.filter(
        Q(status=UploadRequest.Status.FAILED) | Q(reply_status__gte=500)
    ).order_by("-received_at")[:RECENT_ROWS]
    return [
        {
            "at": _epoch(row.received_at),
            "request_id": str(row.pk),
            "status": row.status,
            "reply_status": row.reply_status,
            "error": row.error[:300],
        }
        for row in rows
    ]


def dashboard_data(now: datetime) -> dict[str, Any]:
    since = now - timedelta(seconds=WINDOW_SECONDS)
    fleet = fleet_series(since)
    latest = FleetObservation.objects.order_by("-at").first()
    return {
        "now": _epoch(now),
        "window_seconds": WINDOW_SECONDS,
        "latest": None
        if latest is None
        else {
            "at": _epoch(latest.at),
            **{field: getattr(latest, field) for _, field in INSTANCE_FIELDS},
            **{field: getattr(latest, field) for *_, field in QUEUE_FIELDS},
        },
        "fleet": fleet,
        "uploads": upload_series(since, now),
        "scaling": scaling_decisions(),
        "failures": failures(),
    }
