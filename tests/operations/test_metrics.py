"""/metrics in one process: the series DESIGN.md names, the scaler's records as gauges and
counters, who may scrape, and the per-stage latencies."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from facesite.config import FacesiteConfig
from facesite.metrics import client_allowed, token_matches
from recognition.metrics import stage_durations
from recognition.models import UploadRequest
from scaler.models import FleetObservation, ScalingEvent


def sample(text: str, series: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, None when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != series:
            continue
        found = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if found == wanted:
            return float(match.group(3))
    return None


@pytest.mark.django_db
def test_requests_are_counted_by_endpoint_and_status(client):
    before = (
        sample(
            client.get("/metrics").text, "facesite_requests_total", endpoint="healthz", status="503"
        )
        or 0
    )
    client.get("/healthz")  # 503 here: no response consumers run in the test process
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert sample(text, "facesite_requests_total", endpoint="healthz", status="503") == before + 1
    assert sample(text, "facesite_requests_total", endpoint="unmatched", status="404") >= 1
    assert sample(text, "facesite_request_seconds_count", endpoint="healthz") >= 1
    assert "# TYPE facesite_request_seconds histogram" in text


@pytest.mark.django_db
def test_scaler_records_become_gauges_and_counters(client):
    now = timezone.now()
    FleetObservation.objects.create(at=now - timedelta(seconds=30), running=1, pending=0)
    FleetObservation.objects.create(
        at=now,
        pending=2,
        running=3,
        stopping=1,
        stopped=9,
        shutting_down=0,
        request_visible=7,
        request_in_flight=3,
        response_visible=1,
        response_in_flight=0,
        dead_letter_visible=4,
        dead_letter_in_flight=0,
    )
    ScalingEvent.objects.create(
        at=now,
        action="launch",
        result="ok",
        reason="burst",
        instance_names="app-tier-instance-1 app-tier-instance-2",
    )
    ScalingEvent.objects.create(
        at=now,
        action="launch",
        result="failed",
        reason="burst",
        instance_names="app-tier-instance-3",
    )
    ScalingEvent.objects.create(
        at=now, action="stop", result="ok", reason="idle", instance_names="app-tier-instance-1"
    )
    ScalingEvent.objects.create(at=now, action="error", result="failed", reason="could not x")

    text = client.get("/metrics").text
    assert sample(text, "facesite_instances", state="running") == 3
    assert sample(text, "facesite_instances", state="pending") == 2
    assert sample(text, "facesite_instances", state="stopped") == 9
    assert sample(text, "facesite_queue_messages", queue="request", state="visible") == 7
    assert sample(text, "facesite_queue_messages", queue="request", state="in_flight") == 3
    assert sample(text, "facesite_queue_messages", queue="dead_letter", state="visible") == 4
    assert sample(text, "facesite_scaling_actions_total", action="launch") == 3
    assert sample(text, "facesite_scaling_actions_total", action="stop") == 1
    assert sample(text, "facesite_scaling_actions_total", action="start") == 0
    assert sample(text, "facesite_scaling_actions_total", action="error") is None
    assert 0 <= sample(text, "facesite_scaler_observation_age_seconds") < 60


@pytest.mark.django_db
def test_metrics_refuse_other_networks_and_missing_tokens(client):
    only_elsewhere = FacesiteConfig(metrics_allowed_networks="10.0.0.0/8")
    with override_settings(CONFIG=only_elsewhere):
        assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    with override_settings(FACESITE_METRICS_TOKEN="s3cret"):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200


def test_network_and_token_checks():
    local = FacesiteConfig(aws_endpoint="http://127.0.0.1:5000").metrics_networks
    aws = FacesiteConfig(aws_endpoint="").metrics_networks
    assert client_allowed("203.0.113.9", local)
    assert not client_allowed("203.0.113.9", aws)
    assert client_allowed("127.0.0.1", aws)
    assert client_allowed("::1", aws)
    assert not client_allowed("", aws)
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    assert not token_matches("Basic abc", "abc")
    with pytest.raises(ValueError):
        FacesiteConfig(metrics_allowed_networks="10.0.0.0/8,not-a-network")


def test_stage_durations_come_from_the_history_timestamps():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    row = UploadRequest(
        received_at=t0,
        stored_at=t0 + timedelta(seconds=0.1),
        queued_at=t0 + timedelta(seconds=0.3),
        # The worker started before the web tier recorded queued_at.
        started_at=t0 + timedelta(seconds=0.25),
        finished_at=t0 + timedelta(seconds=1.25),
    )
    stages = stage_durations(row, t0 + timedelta(seconds=1.5))
    assert stages == pytest.approx(
        {"store": 0.1, "queue": 0.2, "wait": 0.0, "recognise": 1.0, "reply": 0.25}
    )
    unfinished = UploadRequest(received_at=t0, stored_at=t0 + timedelta(seconds=0.1))
    assert set(stage_durations(unfinished, t0 + timedelta(seconds=300))) == {"store"}
