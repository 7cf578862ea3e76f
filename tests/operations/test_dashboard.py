"""The staff dashboard: login required, and its JSON document built from the database."""

from datetime import timedelta

import pytest
from django.utils import timezone

from operations.dashboard import dashboard_data, percentile
from recognition.models import UploadRequest
from scaler.models import FleetObservation, ScalingEvent


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/dashboard/", "/dashboard/data.json"])
def test_anonymous_is_sent_to_the_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.django_db
def test_staff_sees_the_page_and_its_assets(admin_client):
    page = admin_client.get("/dashboard/")
    assert page.status_code == 200
    assert b"Instances by state" in page.content
    for asset in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "dashboard.js"):
        assert admin_client.get(f"/dashboard/assets/{asset}").status_code == 200


@pytest.mark.django_db
def test_data_shows_fleet_rates_latency_decisions_and_failures(admin_client):
    now = timezone.now()
    for seconds_ago, running in ((20, 1), (10, 4), (0, 2)):
        FleetObservation.objects.create(
            at=now - timedelta(seconds=seconds_ago),
            running=running,
            pending=0,
            stopped=13,
            request_visible=running * 2,
            request_in_flight=running,
        )
    # 20 replies in the last minute: latencies 0.1 .. 2.0 s.
    for index in range(1, 21):
        received = now - timedelta(seconds=30)
        UploadRequest.objects.create(
            file_name=f"p{index}.jpg",
            status="done",
            received_at=received,
            replied_at=received + timedelta(seconds=index / 10),
            reply_status=200,
        )
    UploadRequest.objects.create(
        file_name="bad.jpg",
        status="failed",
        received_at=now,
        error="Recognition failed: boom",
        reply_status=500,
    )
    ScalingEvent.objects.create(
        at=now,
        action="launch",
        result="ok",
        reason="4 waiting",
        instance_names="app-tier-instance-1",
    )

    data = admin_client.get("/dashboard/data.json").json()
    assert data["latest"]["running"] == 2
    assert data["fleet"]["running"] == [1, 4, 2]
    assert data["fleet"]["request_visible"] == [2, 8, 4]
    assert data["uploads"]["now"]["p50"] == pytest.approx(1.0)
    assert data["uploads"]["now"]["p95"] == pytest.approx(1.9)
    assert sum(data["uploads"]["per_second"]) > 0
    assert data["scaling"][0]["reason"] == "4 waiting"
    assert [f["error"] for f in data["failures"]] == ["Recognition failed: boom"]


@pytest.mark.django_db
def test_data_with_nothing_recorded():
    data = dashboard_data(timezone.now())
    assert data["latest"] is None
    assert data["uploads"]["now"]["p50"] is None
    assert data["scaling"] == [] and data["failures"] == []


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.5) is None
