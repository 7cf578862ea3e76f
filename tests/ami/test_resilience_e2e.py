"""Processes killed under load on `manage.py runstack` (what `make run` runs, nginx front and
all): nothing an upload needs is lost, and the stack heals itself.

The course's 100 photos are the gallery (as `make run` enrolls them) and the uploads, so every
reply has one right answer.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from ami.local.harness import course_labels, wait_until
from facesite.aws import readers
from facesite.aws.names import Role
from tests.ami.test_stack_e2e import RunningStack, child, replaced

pytestmark = pytest.mark.e2e

REPLY_TIMEOUT = 240.0
MAX_INSTANCES = 15


class FleetWatch(threading.Thread):
    """Counts the stack's running app-tier instances every 0.25 s."""

    def __init__(self, stack: RunningStack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.ec2 = stack.ec2()
        self.most = 0
        self.latest = -1
        self._stop_event = threading.Event()

    def running(self) -> int:
        records = readers.instances(self.ec2, self.stack.prefix, Role.APP_TIER)
        return sum(1 for record in records if str(record.state) == "running")

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.latest = self.running()
            self.most = max(self.most, self.latest)
            self._stop_event.wait(0.25)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@pytest.fixture
def course_stack(tmp_path, course_dir):
    stack = RunningStack(
        tmp_path,
        FACESITE_GALLERY_DIR=str(course_dir / "face_images_100"),
        FACESITE_GALLERY_LABELS=str(course_dir / "labels_100.csv"),
    )
    stack.start()
    try:
        stack.wait_running()
        yield stack
    finally:
        stack.kill()


def send_all(
    stack: RunningStack, course_dir: Path, copies: int, pool: ThreadPoolExecutor
) -> list[tuple[str, Future[requests.Response]]]:
    """Every course photo `copies` times under names of their own; (expected reply, future)."""
    labels = course_labels(course_dir, "100")
    jobs = []
    for copy in range(copies):
        for photo in sorted((course_dir / "face_images_100").glob("*.jpg")):
            name = f"{photo.stem}-{copy}.jpg"
            expected = f"{photo.stem}-{copy}:{labels[photo.stem]}"
            jobs.append((expected, pool.submit(post, stack.web_url, photo, name)))
    return jobs


def post(url: str, photo: Path, name: str) -> requests.Response:
    with open(photo, "rb") as image:
        return requests.post(url, files={"inputFile": (name, image)}, timeout=REPLY_TIMEOUT + 30)


def wrong_replies(jobs: list[tuple[str, Future[requests.Response]]]) -> list[str]:
    wrong = []
    for expected, future in jobs:
        reply = future.result()
        if (reply.status_code, reply.text) != (200, expected):
            wrong.append(f"{expected}: {reply.status_code} {reply.text}")
    return wrong


def busy_worker(runner: psutil.Process) -> psutil.Process | None:
    """The worker process (the runner's child) that used the most CPU in the last 0.3 s, if that
    is more than an idle worker's polling uses: one with a task in hand. (Fifteen workers share
    two cores, so a busy one may get only a small slice of the window.)"""
    workers = runner.children()
    before = {}
    for worker in workers:
        try:
            before[worker.pid] = sum(worker.cpu_times()[:2])
        except psutil.Error:
            continue
    time.sleep(0.3)
    used = {}
    for worker in workers:
        try:
            if worker.pid in before:
                used[worker] = sum(worker.cpu_times()[:2]) - before[worker.pid]
        except psutil.Error:
            continue
    busiest = max(used, key=used.get, default=None)
    return busiest if busiest is not None and used[busiest] > 0.02 else None


def test_a_busy_worker_killed_loses_nothing(course_stack, course_dir):
    stack = course_stack
    runner = child(stack, "runinstances")
    fleet = FleetWatch(stack)
    fleet.start()
    with ThreadPoolExecutor(max_workers=100) as pool:
        jobs = send_all(stack, course_dir, 1, pool)
        victim = wait_until(lambda: busy_worker(runner), 120, "a worker busy with a task")
        victim.kill()  # SIGKILL: no warm shutdown, its message is never acknowledged
        wrong = wrong_replies(jobs)
    assert wrong == [], wrong
    runner_log = (stack.var_dir / "log" / "instances.log").read_text()
    assert "worker exited on its own" in runner_log
    # The instance left without a worker is stopped too: the fleet gets back to zero.
    wait_until(lambda: fleet.latest == 0, 60, "no app-tier instance running")
    fleet.stop()
    assert fleet.most <= MAX_INSTANCES


@pytest.mark.slow
def test_the_scaler_killed_during_a_burst(course_stack, course_dir):
    stack = course_stack
    fleet = FleetWatch(stack)
    fleet.start()
    with ThreadPoolExecutor(max_workers=300) as pool:
        jobs = send_all(stack, course_dir, 3, pool)
        wait_until(lambda: fleet.latest >= 2, 60, "the fleet to scale out")
        scaler = child(stack, "runscaler")
        scaler.kill()  # SIGKILL, as an OOM killer would
        killed = time.monotonic()
        wait_until(lambda: replaced(stack, "runscaler", scaler.pid), 5, "a new scaler")
        restarted_after = time.monotonic() - killed
        wrong = wrong_replies(jobs)
        last_reply = time.monotonic()
    assert wrong == [], wrong
    assert restarted_after < 5
    wait_until(lambda: fleet.latest == 0, 5, "no app-tier instance running")
    back_to_zero = time.monotonic() - last_reply
    fleet.stop()
    assert fleet.most <= MAX_INSTANCES
    assert "scaler restarted (restart 1)" in stack.output()
    print(
        f"scaler back after {restarted_after:.1f} s; at most {fleet.most} running; "
        f"0 running {back_to_zero:.1f} s after the last reply"
    )
