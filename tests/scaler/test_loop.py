"""The scaler loop with a fake fleet: recording, reconciling, surviving errors, stopping."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import EndpointConnectionError
from django.db import OperationalError

from recognition.models import UploadRequest
from scaler.loop import ScalerLoop, last_work_at, outstanding_requests
from scaler.models import FleetInstance, ScalingEvent
from scaler.policy import ActionResult, Instance, Kind, Outcome, PolicyConfig, State, decide

CONFIG = PolicyConfig(max_instances=5, warm_pool=0, settle_seconds=1.0, stuck_after=30.0)


class FakeFleet:
    """EC2 in a dict: every action takes effect at once."""

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.visible = self.in_flight = 0
        self.describe_error: Exception | None = None
        self.launched = 0

    def describe(self) -> tuple[Instance, ...]:
        if self.describe_error:
            raise self.describe_error
        return tuple(self.instances.values())

    def queue_depth(self) -> tuple[int, int]:
        return self.visible, self.in_flight

    def set(self, instance_id: str, state: State) -> None:
        instance = self.instances[instance_id]
        self.instances[instance_id] = Instance(instance.id, instance.number, state)

    def apply(self, actions) -> tuple[Outcome, ...]:
        outcomes = []
        for action in actions:
            if action.kind == Kind.LAUNCH:
                self.launched += 1
                new_id = f"i-{self.launched:03d}"
                number = int(action.name.rsplit("-", 1)[1])
                self.instances[new_id] = Instance(new_id, number, State.RUNNING, 1000.0)
                outcomes.append(Outcome(action, ActionResult.OK, new_id))
                continue
            target = {Kind.START: State.RUNNING, Kind.STOP: State.STOPPED}
            self.set(action.instance_id, target.get(action.kind, State.TERMINATED))
            outcomes.append(Outcome(action, ActionResult.OK))
        return tuple(outcomes)


class Clock:
    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def loop(fleet, clock) -> ScalerLoop:
    return ScalerLoop(fleet, CONFIG, tick_seconds=0.25, clock=clock)


@pytest.mark.django_db
def test_actions_are_recorded_once_per_reason_with_what_was_seen(loop, fleet):
    fleet.visible, fleet.in_flight = 2, 1
    decision = loop.tick()
    assert decision.launches == tuple(f"app-tier-instance-{n}" for n in (1, 2, 3))
    (event,) = ScalingEvent.objects.all()
    assert event.action == "launch" and event.result == "ok"
    assert event.instance_names == "app-tier-instance-1 app-tier-instance-2 app-tier-instance-3"
    assert event.instance_ids == "i-001 i-002 i-003"
    assert (event.visible, event.in_flight, event.running, event.stopped) == (2, 1, 0, 0)
    assert "want 3 active" in event.reason
    # A tick without actions writes no event.
    assert loop.tick().actions == ()
    assert ScalingEvent.objects.count() == 1


@pytest.mark.django_db
def test_fleet_rows_follow_ec2_and_only_changes_are_written(
    loop, fleet, clock, django_assert_num_queries
):
    fleet.visible = 2
    loop.tick()  # launches; the rows come from the next observation
    loop.tick()
    rows = {r.instance_id: r for r in FleetInstance.objects.all()}
    assert {(r.name, r.state) for r in rows.values()} == {
        ("app-tier-instance-1", "running"),
        ("app-tier-instance-2", "running"),
    }
    clock.now += 0.25
    # The two request-history aggregates (work per instance, outstanding requests); no write.
    with django_assert_num_queries(2):
        loop.tick()
    fleet.visible = 0
    fleet.set("i-002", State.STOPPING)
    fleet.instances.pop("i-001")
    clock.now += 0.25
    loop.tick()
    (row,) = FleetInstance.objects.all()
    assert (row.instance_id, row.state) == ("i-002", "stopping")
    assert row.state_since == datetime.fromtimestamp(clock.now, UTC)
    # Unchanged rows are still marked observed once a minute.
    clock.now += 61
    loop.tick()
    assert FleetInstance.objects.get().last_observed_at == datetime.fromtimestamp(clock.now, UTC)


@pytest.mark.django_db
def test_an_aws_error_is_survived_logged_and_recorded_once(loop, fleet, clock, caplog):
    fleet.visible = 1
    fleet.describe_error = EndpointConnectionError(endpoint_url="http://127.0.0.1:5000")
    for _ in range(3):
        assert loop.tick().actions == ()
        clock.now += 0.25
    (event,) = ScalingEvent.objects.all()
    assert event.action == "error" and "describe instances" in event.reason
    assert "Could not connect" in event.detail
    assert sum("could not describe instances" in m for m in caplog.messages) == 1
    fleet.describe_error = None
    assert loop.tick().launches == ("app-tier-instance-1",)
    fleet.describe_error = EndpointConnectionError(endpoint_url="http://127.0.0.1:5000")
    loop.tick()
    assert ScalingEvent.objects.filter(action="error").count() == 2


@pytest.mark.django_db
def test_a_driver_crash_makes_outcomes_unknown_and_launches_are_retried(loop, fleet, clock):
    def broken(actions):
        raise RuntimeError("driver bug")

    fleet.visible = 1
    working_apply, fleet.apply = fleet.apply, broken
    first = loop.tick()
    (event,) = ScalingEvent.objects.all()
    assert (event.action, event.result, event.detail) == (
        "launch",
        "unknown",
        "RuntimeError: driver bug",
    )
    fleet.apply = working_apply
    clock.now += 0.25
    (retry,) = loop.tick().actions
    assert retry.retry and retry.generation == first.actions[0].generation


@pytest.mark.django_db
def test_an_unexpected_failure_ends_the_tick_not_the_loop(loop, fleet, caplog):
    def broken():
        raise RuntimeError("bug")

    loop.tick = broken
    loop.run(once=True)
    assert any("tick failed" in m for m in caplog.messages)


@pytest.mark.django_db
def test_last_work_at_is_the_latest_start_or_finish_per_instance():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def request(instance: str, started: float, finished: float | None) -> None:
        UploadRequest.objects.create(
            file_name="x.jpg",
            received_at=now,
            worker_instance_id=instance,
            started_at=now + timedelta(seconds=started),
            finished_at=now + timedelta(seconds=finished) if finished is not None else None,
        )

    request("i-a", -50, -49)
    request("i-a", -10, -9)
    request("i-b", -5, None)  # still working
    request("i-c", -100, -99)  # too old to matter
    request("i-d", 0, 1)  # not asked about
    since = (now - timedelta(seconds=30)).timestamp()
    result = last_work_at(["i-a", "i-b", "i-c"], since)
    assert result == {"i-a": (now - timedelta(seconds=9)).timestamp(), "i-b": since + 25}
    assert last_work_at([], since) == {}


@pytest.mark.django_db
def test_outstanding_requests_are_the_recent_ones_not_final():
    now = datetime.now(UTC)
    statuses = UploadRequest.Status
    for status, age in (
        (statuses.QUEUED, 5),
        (statuses.STORED, 1),
        (statuses.RECEIVED, 2),
        (statuses.DONE, 3),  # final
        (statuses.NO_FACE, 3),  # final
        (statuses.FAILED, 3),  # final
        (statuses.QUEUED, 400),  # older than the horizon: answered with a 504 long ago
    ):
        UploadRequest.objects.create(
            file_name="x.jpg", status=status, received_at=now - timedelta(seconds=age)
        )
    assert outstanding_requests((now - timedelta(seconds=300)).timestamp()) == 3
    # No request in the horizon: the history knows nothing of the queue.
    assert outstanding_requests((now + timedelta(seconds=1)).timestamp()) is None


@pytest.mark.django_db
def test_the_loop_passes_outstanding_requests_to_the_policy(loop, fleet, clock):
    fleet.instances["i-001"] = Instance("i-001", 1, State.RUNNING)
    UploadRequest.objects.create(
        file_name="x.jpg",
        status=UploadRequest.Status.QUEUED,
        received_at=datetime.fromtimestamp(clock.now, tz=UTC),
    )
    # SQS's counts read 0 (they lag): the history's one request keeps the instance running.
    for _ in range(8):
        loop.tick()
        clock.now += 0.25
    assert fleet.instances["i-001"].state == State.RUNNING
    UploadRequest.objects.update(status=UploadRequest.Status.DONE)
    stopped_after = None
    for tick in range(1, 9):
        decision = loop.tick()
        clock.now += 0.25
        if decision.stops:
            stopped_after = tick
            break
    # Settled after 1 s of no outstanding request: the fifth tick, 0.25 s apart.
    assert stopped_after == 5
    assert fleet.instances["i-001"].state == State.STOPPED


@pytest.mark.django_db
def test_run_ticks_until_asked_to_stop(loop):
    ticks: list[float] = []
    loop.tick = lambda: ticks.append(time.monotonic())
    loop.tick_seconds = 0.02
    runner = threading.Thread(target=loop.run)
    runner.start()
    time.sleep(0.2)
    loop.request_stop()
    runner.join(timeout=1)
    assert not runner.is_alive()
    assert 3 <= len(ticks) <= 15  # paced by the tick, not spinning


@pytest.mark.django_db
def test_a_long_tick_is_followed_at_once(loop):
    ticks: list[float] = []

    def slow_tick():
        ticks.append(time.monotonic())
        time.sleep(0.05)
        if len(ticks) == 3:
            loop.request_stop()

    loop.tick = slow_tick
    loop.tick_seconds = 0.04
    loop.run()
    assert len(ticks) == 3 and ticks[2] - ticks[0] < 0.2


@pytest.mark.django_db
def test_an_unreadable_history_is_passed_on_as_unknown(loop, fleet, monkeypatch):
    def locked(ids, since):
        raise OperationalError("database is locked")

    monkeypatch.setattr("scaler.loop.last_work_at", locked)
    seen = []
    monkeypatch.setattr(
        "scaler.loop.decide", lambda obs, *args: seen.append(obs) or decide(obs, *args)
    )
    fleet.instances["i-001"] = Instance("i-001", 1, State.RUNNING)
    loop.tick()
    assert seen[0].last_work_at is None
    assert ScalingEvent.objects.get().reason == "could not read the request history"
