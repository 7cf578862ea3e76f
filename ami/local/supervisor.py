"""Child processes of the local stack, the tests and the benchmarks (Linux only): start a
service with its output in a log file, in its own process group and dying with its parent;
stop services with SIGTERM, then SIGKILL to their whole group after a grace period."""

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


@dataclass
class Service:
    """A long-running child process."""

    name: str
    argv: list[str]
    log_path: Path
    cwd: Path
    # Seconds between SIGTERM and SIGKILL when it is stopped.
    stop_timeout: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
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
