"""The scaler's record of what it observes, and the database and logging settings."""

import json
import logging
from datetime import timedelta

import pytest

from facesite.aws.names import State
from facesite.database import database
from facesite.logs import JsonFormatter, RequestIdFilter
from scaler.models import FleetObservation
from scaler.observations import ObservationRecorder
from scaler.policy import Instance, Observation


class FakeSqs:
    def __init__(self, depths):
        self.depths = depths

    def get_queue_attributes(self, QueueUrl, AttributeNames):
        if QueueUrl not in self.depths:
            raise ConnectionError("unreachable")
        visible, in_flight = self.depths[QueueUrl]
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(visible),
                "ApproximateNumberOfMessagesNotVisible": str(in_flight),
            }
        }


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def observation(now, *states):
    instances = tuple(Instance(f"i-{n}", n, state) for n, state in enumerate(states, 1))
    return Observation(now, 5, 2, instances)


@pytest.mark.django_db
def test_one_row_per_interval_with_states_and_all_three_queues():
    clock = Clock()
    recorder = ObservationRecorder(
        FakeSqs({"resp": (1, 0)}), "resp", "dlq", interval=2.0, keep_seconds=60, clock=clock
    )
    row = recorder(observation(1000.0, State.RUNNING, State.RUNNING, State.PENDING, State.STOPPED))
    assert (row.running, row.pending, row.stopped, row.stopping) == (2, 1, 1, 0)
    assert (row.request_visible, row.request_in_flight) == (5, 2)
    assert (row.response_visible, row.response_in_flight) == (1, 0)
    # The dead-letter queue could not be read: unknown, not zero.
    assert (row.dead_letter_visible, row.dead_letter_in_flight) == (None, None)
    clock.now = 1.0
    assert recorder(observation(1001.0, State.RUNNING)) is None
    clock.now = 2.0
    assert recorder(observation(1002.0, State.RUNNING)).running == 1
    assert FleetObservation.objects.count() == 2
    unknown = recorder.__class__(FakeSqs({}), "r", "d", 0.0, 60, clock)(
        Observation(1003.0, None, None, None)
    )
    assert (unknown.running, unknown.request_visible) == (None, None)


@pytest.mark.django_db
def test_old_rows_are_pruned():
    recorder = ObservationRecorder(FakeSqs({}), "r", "d", interval=0.0, keep_seconds=60)
    recorder(observation(1000.0))
    for step in range(99):
        recorder(observation(1001.0 + step))
    assert FleetObservation.objects.count() == 100
    recorder(observation(1000.0 + 61 + 100))  # the 101st write prunes
    oldest = FleetObservation.objects.order_by("at").first().at
    newest = FleetObservation.objects.order_by("-at").first().at
    assert newest - oldest <= timedelta(seconds=60)


def test_database_url_selects_postgresql_and_sqlite_stays_default(tmp_path):
    sqlite = database("", tmp_path / "db.sqlite3", 20)
    assert sqlite["ENGINE"] == "django.db.backends.sqlite3"
    assert sqlite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    pg = database(
        "postgres://face%40site:p%3Ass@db.internal:6543/facesite?sslmode=require",
        tmp_path / "unused",
        7,
    )
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"], pg["NAME"]) == (
        "face@site",
        "p:ss",
        "db.internal",
        "6543",
        "facesite",
    )
    assert pg["OPTIONS"]["sslmode"] == "require"
    assert pg["OPTIONS"]["pool"]["max_size"] == 7
    assert "transaction_mode" not in pg["OPTIONS"]
    with pytest.raises(ValueError):
        database("postgres://db.internal/", tmp_path / "unused", 7)


def test_json_lines_carry_the_request_id():
    record = logging.LogRecord(
        "recognition", logging.INFO, __file__, 1, "request %s done", ("abc",), None
    )
    record.request_id = "abc"
    assert RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request abc done"
    assert line["request_id"] == "abc"
    assert line["level"] == "INFO"
    bare = logging.LogRecord("x", logging.INFO, __file__, 1, "no request", (), None)
    RequestIdFilter().filter(bare)
    assert json.loads(JsonFormatter().format(bare))["request_id"] == ""
