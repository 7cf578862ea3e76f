"""Read-only views of the scaler's records: the scaler writes them, people only look."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from scaler.models import FleetInstance, ScalingEvent


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
