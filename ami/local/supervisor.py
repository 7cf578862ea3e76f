"""Child processes of the local stack, the tests and the benchmarks (Linux only): start a
service with its output in a log file, in its own process group and dying with its parent;
restart one that dies, with backoff, when it has a restart policy (as systemd's Restart=always
does for a unit); stop services with SIGTERM, then SIGKILL to their whole group after a grace
period."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent exits, however it exits.

    Kept across exec, so it also covers commands started from a forked child. Call it in the
    child right after fork; a parent that died before the call is caught by checking the pid.
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@dataclass(frozen=True)
class RestartPolicy:
    """When and how often a service that died is started again: systemd's Restart=always with
    a RestartSec that doubles on each crash in a row, and a start limit."""

    first_delay: float = 0.5  # seconds before the first restart
    max_delay: float = 30.0
    # A run at least this long was healthy: the next crash waits first_delay again.
    healthy_after: float = 60.0
    # More restarts than this within limit_window seconds: the service is failing, not crashing
    # now and then (a taken port, a broken configuration), and restarting it is given up.
    limit_burst: int = 5
    limit_window: float = 120.0

    def delay(self, crashes_in_a_row: int) -> float:
        """Seconds to wait before restart number ``crashes_in_a_row`` (1 for the first)."""
        return min(self.max_delay, self.first_delay * 2 ** (crashes_in_a_row - 1))


class ServiceFailed(Exception):
    """A service died and is not (or no longer) restarted; the message says which and why."""


@dataclass
class Service:
    """A long-running child process; restarted after it dies if it has a restart policy."""

    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    # Seconds between SIGTERM and SIGKILL when it is stopped.
    stop_timeout: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restart: RestartPolicy | None = None
    # Restart bookkeeping (monotonic seconds).
    started_at: float = 0.0
    restart_times: list[float] = field(default_factory=list)
    crashes_in_a_row: int = 0
    restart_due: float | None = None
    # Set when it is being stopped on purpose: it is not restarted then.
    stopping: bool = False

    def start(self) -> subprocess.Popen[bytes]:
        self.started_at = time.monotonic()
        self.stopping = False
        with open(self.log_path, "ab") as log:
            log.write(f"=== {self.name} started {datetime.now(UTC).isoformat()}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C comes through us
                preexec_fn=die_with_parent,
            )
        return self.process

    def exit_status(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the service's own process, which stops its children in its own way."""
        self.stopping = True
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL to the service's process group: it and whatever it left behind."""
        if self.process is None:
            return
        # An empty group (everything already exited) is fine.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.poll()

    def supervise(self, say: Callable[[str], None] = lambda line: None) -> None:
        """Look after the service once (call it every fraction of a second): a dead service
        with a restart policy is restarted when its backoff is over, and the crash and the
        restart are logged, to ``say`` and to the service's log. Raises ServiceFailed when the
        service died and has no restart policy, or has crashed too often to go on."""
        status = self.exit_status()
        if status is None or self.stopping:
            return
        now = time.monotonic()
        if self.restart_due is None:
            self._crashed(status, now, say)
        if self.restart_due is not None and now >= self.restart_due:
            self.restart_due = None
            self.restart_times.append(now)
            self.start()
            say(f"{self.name} restarted (restart {len(self.restart_times)}); log {self.log_path}")

    def _crashed(self, status: int, now: float, say: Callable[[str], None]) -> None:
        tail = f"the end of {self.log_path}:\n{self.log_tail()}"
        if self.restart is None:
            raise ServiceFailed(f"{self.name} exited unexpectedly (status {status}); {tail}")
        policy = self.restart
        recent = [t for t in self.restart_times if now - t < policy.limit_window]
        if len(recent) >= policy.limit_burst:
            raise ServiceFailed(
                f"{self.name} exited (status {status}) after {len(recent)} restarts in "
                f"{policy.limit_window:.0f} s: not restarting it again; {tail}"
            )
        healthy = now - self.started_at >= policy.healthy_after
        self.crashes_in_a_row = 1 if healthy else self.crashes_in_a_row + 1
        delay = policy.delay(self.crashes_in_a_row)
        # Whatever it left behind in its group (a web server's workers, a runner's worker
        # processes) goes too, as systemd's KillMode=control-group does: the new one starts
        # clean and nothing holds its port.
        self.kill_group()
        line = f"{self.name} exited unexpectedly (status {status}); restarting it in {delay:.1f} s"
        say(f"WARNING: {line}")
        with open(self.log_path, "ab") as log:
            log.write(f"=== {line} ({datetime.now(UTC).isoformat()})\n".encode())
        self.restart_due = now + delay

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_services(
    services: Iterable[Service],
    say: Callable[[str], None] = lambda line: None,
    hurry: Callable[[], bool] = lambda: False,
) -> None:
    """SIGTERM every running service at once (their shutdowns overlap instead of adding up),
    SIGKILL each group whose grace is over, or all of them once `hurry()` says so."""
    services = list(services)
    for service in services:
        service.stopping = True
        service.restart_due = None
    started = time.monotonic()
    running = [service for service in services if service.running()]
    for service in running:
        service.terminate()
    while running:
        time.sleep(0.05)
        for service in list(running):
            if service.exit_status() is not None:
                say(f"  {service.name} stopped ({time.monotonic() - started:.1f} s)")
                running.remove(service)
            elif hurry() or time.monotonic() - started > service.stop_timeout:
                say(f"  {service.name} did not stop in time: killing it")
                service.kill_group()
    # Whatever a service left behind in its process group goes with it.
    for service in services:
        service.kill_group()
