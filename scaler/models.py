"""What the scaler records: the actions it took (and failed to take), and the fleet as it last
saw it. Neither drives a decision: every tick reconciles from EC2's tags, never from these."""

from enum import StrEnum

from django.db import models

from facesite.aws.names import State
from scaler.policy import ActionResult, Kind

# A ScalingEvent's action when it records an error the loop survived rather than an action.
ERROR_ACTION = "error"


def choices(enum: type[StrEnum], labels: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Model choices from the enum that owns the vocabulary, labelled by value unless said."""
    labels = labels or {}
    return [(member.value, labels.get(member.value, member.value)) for member in enum]


class ScalingEvent(models.Model):
    """One kind of action taken in one tick for one reason, or an error the loop survived."""

    at = models.DateTimeField(db_index=True)
    action = models.CharField(
        max_length=16, choices=[*choices(Kind), (ERROR_ACTION, ERROR_ACTION)], db_index=True
    )
    result = models.CharField(
        max_length=16,
        choices=choices(ActionResult, {"unknown": "unknown (no answer)"}),
        blank=True,
        db_index=True,
    )
    # Space-separated: a handful per row, searchable in the admin.
    instance_ids = models.TextField(blank=True)
    instance_names = models.TextField(blank=True)
    reason = models.TextField()
    detail = models.TextField(blank=True)  # the API's error, when there was one
    # What the scaler saw when it decided (null: that part could not be read).
    visible = models.PositiveIntegerField(null=True, blank=True)
    in_flight = models.PositiveIntegerField(null=True, blank=True)
    running = models.PositiveIntegerField(null=True, blank=True)
    pending = models.PositiveIntegerField(null=True, blank=True)
    stopped = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.instance_names or self.instance_ids}".strip()


class FleetInstance(models.Model):
    """An app-tier instance as the scaler last observed it."""

    instance_id = models.CharField(max_length=32, primary_key=True)
    name = models.CharField(max_length=64, db_index=True)
    number = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=16, choices=choices(State, {"shutting-down": "shutting down"}), db_index=True
    )
    launched_at = models.DateTimeField(null=True, blank=True)
    state_since = models.DateTimeField()  # when the scaler first saw the current state
    # Refreshed with every change and at least once a minute, not every tick.
    last_observed_at = models.DateTimeField()

    class Meta:
        ordering = ["number", "instance_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.instance_id}, {self.state})"


class FleetObservation(models.Model):
    """What the scaler saw at one moment: app-tier instances by state and the queues' depths.

    Written every FACESITE_OBSERVATION_INTERVAL by the scaler (its own process, on the web
    machine or not), read by any web process for /metrics and the dashboard. Null: that part
    could not be read. Rows older than FACESITE_OBSERVATION_KEEP_SECONDS are pruned.
    """

    at = models.DateTimeField(db_index=True)
    pending = models.PositiveIntegerField(null=True)
    running = models.PositiveIntegerField(null=True)
    stopping = models.PositiveIntegerField(null=True)
    stopped = models.PositiveIntegerField(null=True)
    shutting_down = models.PositiveIntegerField(null=True)
    request_visible = models.PositiveIntegerField(null=True)
    request_in_flight = models.PositiveIntegerField(null=True)
    response_visible = models.PositiveIntegerField(null=True)
    response_in_flight = models.PositiveIntegerField(null=True)
    dead_letter_visible = models.PositiveIntegerField(null=True)
    dead_letter_in_flight = models.PositiveIntegerField(null=True)

    class Meta:
        ordering = ["-at"]
        get_latest_by = "at"

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S}: {self.running} running, {self.request_visible} waiting"
