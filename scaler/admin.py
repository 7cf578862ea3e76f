"""Read-only views of the scaler's records: the scaler writes them, people only look."""

from django.contrib import admin

from facesite.admin import ReadOnlyAdmin
from scaler.models import FleetInstance, ScalingEvent


@admin.register(ScalingEvent)
class ScalingEventAdmin(ReadOnlyAdmin):
    list_display = (
        "at",
        "action",
        "result",
        "instance_names",
        "reason",
        "visible",
        "in_flight",
        "running",
        "pending",
        "stopped",
    )
    list_filter = ("action", "result", "at")
    search_fields = ("instance_ids", "instance_names", "reason", "detail")
    date_hierarchy = "at"


@admin.register(FleetInstance)
class FleetInstanceAdmin(ReadOnlyAdmin):
    list_display = (
        "name",
        "instance_id",
        "state",
        "state_since",
        "launched_at",
        "last_observed_at",
    )
    list_filter = ("state",)
    search_fields = ("name", "instance_id")
    date_hierarchy = "launched_at"
