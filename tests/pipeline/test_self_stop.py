"""The worker's self-stop loop, with the queue, the clock and EC2 stood in for."""

import pytest

from recognition.worker import selfstop as worker


class ScriptedStopEvent:
    """Stands in for the worker's stop event: records each pause and ends after `rounds`."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.pauses: list[float] = []

    def wait(self, pause: float) -> bool:
        self.pauses.append(pause)
        return len(self.pauses) > self.rounds


class FakeEC2:
    def __init__(self) -> None:
        self.stopped: list[list[str]] = []

    def stop_instances(self, InstanceIds: list[str]) -> None:  # noqa: N803 - boto3's name
        self.stopped.append(InstanceIds)


@pytest.fixture
def ec2(monkeypatch):
    fake = FakeEC2()
    monkeypatch.setattr(worker.aws, "client", lambda service: fake)
    return fake


def run_loop(monkeypatch, rounds, queue_empty, idle_for=lambda: 10.0):
    stop = ScriptedStopEvent(rounds)
    monkeypatch.setattr(worker, "_stopping", stop)
    monkeypatch.setattr(worker, "queue_is_empty", queue_empty)
    monkeypatch.setattr(worker, "idle_for", idle_for)
    worker.self_stop_loop("i-123", interval=0.25, idle_after=0.5)
    return stop.pauses


def test_an_idle_worker_stops_its_instance_once_the_queue_is_empty(monkeypatch, ec2):
    pauses = run_loop(monkeypatch, rounds=2, queue_empty=lambda: True)
    assert ec2.stopped == [["i-123"], ["i-123"]]
    assert pauses == [0.25, worker.STOP_RECHECK_SECONDS, worker.STOP_RECHECK_SECONDS]


def test_an_idle_worker_checks_a_busy_queue_less_and_less_often(monkeypatch, ec2):
    pauses = run_loop(monkeypatch, rounds=6, queue_empty=lambda: False)
    assert ec2.stopped == []
    assert pauses == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert max(pauses) == worker.BUSY_QUEUE_RECHECK_MAX_SECONDS


def test_a_task_resets_the_pace_and_a_busy_worker_never_asks(monkeypatch, ec2):
    idle = iter([10.0, 10.0, 0.0, 10.0])
    asked = []

    def queue_empty():
        asked.append(True)
        return False

    pauses = run_loop(monkeypatch, rounds=4, queue_empty=queue_empty, idle_for=lambda: next(idle))
    assert pauses == [0.25, 0.5, 1.0, 0.25, 0.5]
    assert len(asked) == 3
    assert ec2.stopped == []
