"""The scaler's admin pages: read-only lists with filters, search and dates."""

from datetime import UTC, datetime

import pytest

from scaler.models import FleetInstance, ScalingEvent

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_admin_lists_events_and_fleet_read_only(admin_client):
    ScalingEvent.objects.create(
        at=NOW, action="launch", result="ok", instance_names="app-tier-instance-1", reason="r"
    )
    FleetInstance.objects.create(
        instance_id="i-1",
        name="app-tier-instance-1",
        number=1,
        state="running",
        state_since=NOW,
        last_observed_at=NOW,
    )
    for page in ("scalingevent", "fleetinstance"):
        response = admin_client.get(f"/admin/scaler/{page}/?q=app-tier-instance-1")
        assert response.status_code == 200
        assert b"app-tier-instance-1" in response.content
        assert admin_client.get(f"/admin/scaler/{page}/add/").status_code == 403
    event = ScalingEvent.objects.get()
    response = admin_client.post(f"/admin/scaler/scalingevent/{event.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
