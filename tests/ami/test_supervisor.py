"""The supervisor's restart policy on real (tiny) processes: restarted with growing delays,
logged, given up after the start limit; a service without a policy fails at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ami.local.supervisor import RestartPolicy, Service, ServiceFailed, stop_services

FAST = RestartPolicy(first_delay=0.2, max_delay=0.8, healthy_after=30, limit_burst=3)


def crashing(tmp_path: Path, policy: RestartPolicy | None) -> Service:
    """A service that exits with status 3 a moment after it starts."""
    argv = [sys.executable, "-c", "import time, sys; time.sleep(0.05); sys.exit(3)"]
    return Service("crasher", argv, tmp_path / "crasher.log", tmp_path, restart=policy)


def supervise_until(service: Service, said: list[str], restarts: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(service.restart_times) < restarts:
        assert time.monotonic() < deadline, said
        service.supervise(said.append)
        time.sleep(0.01)


def test_delays_double_up_to_the_maximum() -> None:
    assert [FAST.delay(n) for n in (1, 2, 3, 4)] == [0.2, 0.4, 0.8, 0.8]


def test_a_dead_service_is_restarted_with_backoff_then_given_up(tmp_path: Path) -> None:
    service = crashing(tmp_path, FAST)
    service.start()
    said: list[str] = []
    supervise_until(service, said, restarts=3, timeout=10)
    gaps = [b - a for a, b in zip(service.restart_times, service.restart_times[1:], strict=False)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.8  # each wait doubles (the run itself adds ~0.05 s)
    assert "restarting it in 0.2 s" in said[0] and "status 3" in said[0]
    assert "crasher restarted (restart 1)" in said[1]
    log = (tmp_path / "crasher.log").read_text()
    assert log.count("=== crasher started") == 4 and "restarting it in 0.8 s" in log

    with pytest.raises(ServiceFailed, match="after 3 restarts in 120 s: not restarting"):
        while True:
            service.supervise(said.append)
            time.sleep(0.01)


def test_a_service_without_a_policy_fails_at_once(tmp_path: Path) -> None:
    service = crashing(tmp_path, None)
    service.start()
    service.process.wait(10)
    with pytest.raises(ServiceFailed, match="crasher exited unexpectedly \\(status 3\\)"):
        service.supervise()


def test_a_running_service_is_left_alone_and_stops_normally(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    service = Service("sleeper", argv, tmp_path / "sleeper.log", tmp_path, restart=FAST)
    process = service.start()
    service.supervise()
    assert service.process is process and not service.restart_times
    stop_services([service])
    assert process.poll() is not None
    service.supervise()
    assert service.restart_due is None  # stopped on purpose: not to be restarted
