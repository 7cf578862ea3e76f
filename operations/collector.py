"""The /metrics series that come from the database rather than from the web process counting:
what the scaler last observed (instances by state, queue depths) and the actions it took.

The scaler is its own process, on the web machine or elsewhere; it records what it sees
(scaler.observations), and every web process reads the latest record when scraped, so each
machine's /metrics tells the same fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db import DatabaseError
from django.db.models import IntegerField, Sum, Value
from django.db.models.functions import Length, Replace
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from facesite.aws.names import State
from scaler.models import ERROR_ACTION, FleetObservation, ScalingEvent
from scaler.policy import Kind

logger = logging.getLogger(__name__)

# (label value, FleetObservation field) for each queue and state.
QUEUE_FIELDS = (
    ("request", "visible", "request_visible"),
    ("request", "in_flight", "request_in_flight"),
    ("response", "visible", "response_visible"),
    ("response", "in_flight", "response_in_flight"),
    ("dead_letter", "visible", "dead_letter_visible"),
    ("dead_letter", "in_flight", "dead_letter_in_flight"),
)
INSTANCE_FIELDS = (
    (State.PENDING, "pending"),
    (State.RUNNING, "running"),
    (State.STOPPING, "stopping"),
    (State.STOPPED, "stopped"),
    (State.SHUTTING_DOWN, "shutting_down"),
)


def scaling_action_totals() -> dict[str, int]:
    """Instances acted on so far, by action. A ScalingEvent groups the instances one tick acted
    on for one reason (space-separated names), so each row counts its names."""
    names = Length("instance_names") - Length(Replace("instance_names", Value(" "), Value("")))
    rows = (
        ScalingEvent.objects.exclude(action=ERROR_ACTION)
        .exclude(instance_names="")
        .order_by()
        .values("action")
        .annotate(total=Sum(names + 1, output_field=IntegerField()))
    )
    totals = {str(kind): 0 for kind in Kind}
    totals.update({row["action"]: int(row["total"] or 0) for row in rows})
    return totals


class DatabaseCollector:
    """A prometheus_client collector reading the scaler's records at scrape time."""

    def collect(self) -> Iterator[Metric]:
        try:
            latest = FleetObservation.objects.order_by("-at").first()
            actions = scaling_action_totals()
        except DatabaseError:
            logger.exception("metrics: could not read the scaler's records")
            return
        queues = GaugeMetricFamily(
            "facesite_queue_messages",
            "Messages in each queue as the scaler last saw them (SQS's approximate counts): "
            "visible = waiting, in_flight = received and not yet deleted.",
            labels=["queue", "state"],
        )
        instances = GaugeMetricFamily(
            "facesite_instances",
            "App-tier EC2 instances by state, as the scaler last saw them.",
            labels=["state"],
        )
        age = GaugeMetricFamily(
            "facesite_scaler_observation_age_seconds",
            "Seconds since the scaler's latest observation: large when the scaler is not running.",
        )
        if latest is not None:
            for queue, state, field in QUEUE_FIELDS:
                value = getattr(latest, field)
                if value is not None:
                    queues.add_metric([queue, state], value)
            for state, field in INSTANCE_FIELDS:
                value = getattr(latest, field)
                if value is not None:
                    instances.add_metric([str(state)], value)
            age.add_metric([], (timezone.now() - latest.at).total_seconds())
        scaling = CounterMetricFamily(
            "facesite_scaling_actions",
            "Instances the scaler acted on, by action (start, launch, stop, terminate), "
            "whatever the API answered.",
            labels=["action"],
        )
        for action, total in sorted(actions.items()):
            scaling.add_metric([action], total)
        yield from (queues, instances, age, scaling)
