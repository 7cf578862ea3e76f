"""The worker's self-stop loop and its instance id, with the queue, the clock, the metadata
service and EC2 stood in for."""

import pytest

from recognition.worker import selfstop as worker
from recognition.worker.backoff import backoff_seconds


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


def run_loop(monkeypatch, rounds, queue_empty, idle_for=lambda: 10.0, instance=lambda: "i-123"):
    stop = ScriptedStopEvent(rounds)
    monkeypatch.setattr(worker, "_stopping", stop)
    monkeypatch.setattr(worker, "queue_is_empty", queue_empty)
    monkeypatch.setattr(worker, "idle_for", idle_for)
    worker.self_stop_loop(instance, interval=0.25, idle_after=0.5)
    return stop.pauses


def sqs_denied():
    raise PermissionError("AccessDenied: sqs:GetQueueAttributes")


def within_backoff_band(pause, failures, interval=0.25):
    """Jitter keeps each pause in [half, all] of the capped exponential."""
    ceiling = min(worker.FAILED_CHECK_MAX_PAUSE_SECONDS, interval * 2 ** (failures - 1))
    return ceiling / 2 <= pause <= ceiling


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


def test_a_task_begun_while_the_queue_is_read_keeps_the_instance(monkeypatch, ec2):
    idle = iter([10.0, 0.0, 0.0])  # idle at the check; a task by the time the answer came
    pauses = run_loop(monkeypatch, rounds=2, queue_empty=lambda: True, idle_for=lambda: next(idle))
    assert ec2.stopped == []
    assert pauses == [0.25, 0.25, 0.25]


def test_a_worker_is_idle_from_when_it_is_ready_not_from_its_import(monkeypatch):
    started = []

    class RecordedThread:
        def __init__(self, target, **_):
            self.target = target

        def start(self):
            started.append(self.target)

    monkeypatch.setattr(worker, "instance_id", lambda: "i-123")
    monkeypatch.setattr(worker.threading, "Thread", RecordedThread)
    monkeypatch.setattr(worker, "_idle_since", worker.time.monotonic() - 3600)  # forked late
    worker.start_self_stop()
    assert started == [worker.self_stop_loop]
    assert worker.idle_for() < 1


def test_failed_checks_back_off_exponentially_up_to_the_cap(monkeypatch, ec2, caplog):
    pauses = run_loop(monkeypatch, rounds=14, queue_empty=sqs_denied)
    assert ec2.stopped == []
    assert pauses[0] == 0.25
    after_failures = pauses[1:]
    assert all(within_backoff_band(p, n) for n, p in enumerate(after_failures, start=1)), pauses
    # Doubling from 0.25 s reaches the 60 s cap by the 9th failure and stays there.
    assert after_failures[-1] >= worker.FAILED_CHECK_MAX_PAUSE_SECONDS / 2
    assert max(after_failures) <= worker.FAILED_CHECK_MAX_PAUSE_SECONDS
    assert sum(after_failures) > 150  # 14 failures take minutes, not 14 x 0.25 s
    assert len(set(after_failures[-5:])) == 5  # jittered, not in lockstep with other workers
    assert "self-stop check failed (14 in a row)" in caplog.text


def test_a_successful_check_resets_the_failure_backoff(monkeypatch, ec2):
    answers = iter([sqs_denied, sqs_denied, sqs_denied, lambda: True, sqs_denied])
    pauses = run_loop(monkeypatch, rounds=5, queue_empty=lambda: next(answers)())
    assert ec2.stopped == [["i-123"]]
    assert within_backoff_band(pauses[3], 3)
    assert pauses[4] == worker.STOP_RECHECK_SECONDS
    assert within_backoff_band(pauses[5], 1)  # the next failure starts again from the interval


def test_an_unknown_instance_id_is_a_failed_check_asked_again(monkeypatch, ec2):
    ids = iter(["", "", "i-late"])
    pauses = run_loop(monkeypatch, rounds=3, queue_empty=lambda: True, instance=lambda: next(ids))
    assert ec2.stopped == [["i-late"]]
    assert within_backoff_band(pauses[1], 1) and within_backoff_band(pauses[2], 2)
    assert pauses[3] == worker.STOP_RECHECK_SECONDS


@pytest.mark.parametrize(
    ("failures", "draw", "expected"),
    [(1, 0.0, 0.125), (1, 0.999, 0.249875), (3, 0.0, 0.5), (20, 0.0, 30.0), (10**6, 0.0, 30.0)],
)
def test_backoff_seconds(failures, draw, expected):
    assert backoff_seconds(failures, 0.25, 60.0, draw=lambda: draw) == pytest.approx(expected)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_metadata_lookup_is_retried_later_and_a_found_id_kept():
    clock = FakeClock()
    answers = iter([None, None, "i-0abc"])
    calls = []

    def lookup():
        calls.append(clock.now)
        return next(answers)

    identity = worker.InstanceIdentity(lookup, retry_after=30.0, clock=clock)
    assert identity() == "" and identity.pending
    clock.now += 29.0
    assert identity() == ""  # not asked again yet: a lookup can take seconds to time out
    assert calls == [1000.0]
    clock.now += 1.0
    assert identity() == "" and identity.pending
    clock.now += 30.0
    assert identity() == "i-0abc" and not identity.pending
    clock.now += 1000.0
    assert identity() == "i-0abc"
    assert calls == [1000.0, 1030.0, 1060.0]


def test_no_instance_is_kept_without_asking_again():
    calls = []
    identity = worker.InstanceIdentity(lambda: calls.append(1) or "")
    assert identity() == "" and identity() == ""
    assert calls == [1] and not identity.pending
    identity.forget()
    assert identity() == "" and calls == [1, 1]
