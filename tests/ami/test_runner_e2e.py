"""The local instance runner end to end: a real moto server, `manage.py runinstances` as a
subprocess, instances started and stopped through the EC2 API, real Celery workers over SQS.

Every test runs under its own prefix (tests/harness.Stack), so nothing here touches a running
`make run`. Workers get FACESITE_SELF_STOP_INTERVAL=3600: they must not stop their own instances
while a test watches them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ami.image.bootscript import parse_user_data, render_boot_script
from ami.local.harness import Stack, wait_until
from ami.local.runner import DEFAULT_INTERVAL
from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Role

pytestmark = pytest.mark.e2e

ZYGOTE_TIMEOUT = 180  # importing torch and loading the models on a busy machine
QUIET_WORKERS = {"FACESITE_SELF_STOP_INTERVAL": "3600"}

RENDER_USER_DATA = (
    "from ami.image.bootscript import worker_user_data; print(worker_user_data(), end='')"
)
CAPTURE_TASK = (
    "from recognition.messages import send_recognize_task; "
    "send_recognize_task('00000000-0000-0000-0000-000000000000', 'missing.jpg', '', '')"
)
BOOTING = re.compile(r"(\S+) \((i-[0-9a-f]+), pid (\d+)\) is running: booting its worker")
CONSUMING = re.compile(r"(\S+) \((i-[0-9a-f]+)\): worker consuming")


@dataclass
class Runner:
    """One `manage.py runinstances` process and what its log says."""

    stack: Stack
    process: subprocess.Popen
    log: Path
    _read: bytes = b""

    def text(self) -> str:
        # Only the new bytes: this is polled while workers boot, and must not compete with them.
        with open(self.log, "rb") as log:
            log.seek(len(self._read))
            self._read += log.read()
        return self._read.decode(errors="replace")

    def booted(self, instance_id: str) -> list[int]:
        """Pids of the workers started for `instance_id`, oldest first."""
        return [int(m[3]) for m in BOOTING.finditer(self.text()) if m[2] == instance_id]

    def consuming(self) -> list[str]:
        """Instance ids whose worker reported consuming, one entry per boot."""
        return [m[2] for m in CONSUMING.finditer(self.text())]


def start_runner(stack: Stack, name: str = "instances", **env: str) -> Runner:
    log = stack.log_dir / f"{name}.log"
    process = stack.spawn(
        name,
        [sys.executable, "manage.py", "runinstances", "--stop-grace", "10"],
        **{**QUIET_WORKERS, **env},
    )
    runner = Runner(stack, process, log)
    wait_until(
        lambda: "watching app-tier instances" in runner.text() or process.poll() is not None,
        ZYGOTE_TIMEOUT,
        "the runner's zygote",
    )
    assert process.poll() is None, runner.text()[-3000:]
    assert "1 OS thread)" in runner.text(), "the zygote must be single-threaded before forking"
    return runner


def new_stack(moto_server, tmp_path_factory) -> Stack:
    stack = Stack(moto_server, tmp_path_factory.mktemp("runner"), **QUIET_WORKERS)
    stack.manage("provision")
    return stack


def worker_user_data(stack: Stack) -> str:
    """The boot script a scaler configured like this stack would launch instances with."""
    return stack.manage("shell", "-v", "0", "-c", RENDER_USER_DATA).stdout


def launch(stack: Stack, names: list[str], user_data: str) -> dict[str, float]:
    """Launch one instance per name, concurrently (as the scaler does); returns each instance's
    id and the time (time.monotonic) its run_instances returned, i.e. it was running."""
    ec2 = stack.client("ec2")

    def run(name: str) -> tuple[str, float]:
        tags = [
            {"Key": "Name", "Value": name},
            {"Key": PREFIX_TAG, "Value": stack.prefix},
            {"Key": ROLE_TAG, "Value": Role.APP_TIER},
        ]
        instance_id = ec2.run_instances(
            ImageId="ami-12345678",
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            UserData=user_data,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"]
        return instance_id, time.monotonic()

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(run, names))


def state(stack: Stack, instance_id: str) -> str:
    reservations = stack.client("ec2").describe_instances(InstanceIds=[instance_id])
    return reservations["Reservations"][0]["Instances"][0]["State"]["Name"]


def wait_consuming(
    runner: Runner, running_at: dict[str, float], timeout: float, mark: int
) -> dict[str, float]:
    """Seconds from each instance's running time until its worker reported consuming, counting
    only the runner's reports after the first `mark` (take `len(runner.consuming())` first)."""
    ready: dict[str, float] = {}

    def all_ready() -> bool:
        for instance_id in runner.consuming()[mark:]:
            if instance_id in running_at and instance_id not in ready:
                ready[instance_id] = time.monotonic() - running_at[instance_id]
        return len(ready) == len(running_at)

    wait_until(all_ready, timeout, f"{len(running_at)} workers consuming", interval=0.05)
    return ready


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TaskSender:
    """Sends real task messages: one produced by recognition.worker.tasks, replayed with new ids."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sqs = stack.client("sqs")
        stack.manage("shell", "-c", CAPTURE_TASK)
        messages = self.sqs.receive_message(
            QueueUrl=stack.queue_url("req-queue"), WaitTimeSeconds=5
        )["Messages"]
        self.sqs.delete_message(
            QueueUrl=stack.queue_url("req-queue"), ReceiptHandle=messages[0]["ReceiptHandle"]
        )
        self.template = json.loads(messages[0]["Body"])

    def send(self) -> str:
        task_id = str(uuid.uuid4())
        message = json.loads(json.dumps(self.template))
        message["headers"]["id"] = task_id
        message["properties"]["correlation_id"] = task_id
        message["properties"]["delivery_tag"] = str(uuid.uuid4())
        self.sqs.send_message(
            QueueUrl=self.stack.queue_url("req-queue"), MessageBody=json.dumps(message)
        )
        return task_id

    def results(self, task_ids: set[str], timeout: float = 30) -> dict[str, dict]:
        """The result messages of these tasks (request id -> result), from the response queue."""
        found: dict[str, dict] = {}

        def collect() -> bool:
            url = self.stack.queue_url("resp-queue")
            response = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for message in response.get("Messages", []):
                result = json.loads(message["Body"])
                found[result["request_id"]] = result
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return task_ids <= found.keys()

        wait_until(collect, timeout, f"{len(task_ids)} task results", interval=0)
        return {task_id: found[task_id] for task_id in task_ids}


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory):
    stack = new_stack(moto_server, tmp_path_factory)
    yield stack
    stack.stop_all()


@pytest.fixture(scope="module")
def user_data(stack) -> str:
    return worker_user_data(stack)


@pytest.fixture(scope="module")
def tasks(stack) -> TaskSender:
    return TaskSender(stack)


@pytest.fixture(scope="module")
def runner(stack, user_data, tasks) -> Runner:
    return start_runner(stack)


@pytest.fixture
def cleanup(stack):
    """Terminates the instances a test launched, so the next test starts from a quiet fleet."""
    launched: list[str] = []
    yield launched
    if launched:
        stack.client("ec2").terminate_instances(InstanceIds=launched)


def names(count: int) -> list[str]:
    base = int(time.time() * 1000) % 10_000_000
    return [f"app-tier-instance-{base + n}" for n in range(1, count + 1)]


def test_running_instances_become_consuming_workers(stack, runner, user_data, tasks, cleanup):
    mark = len(runner.consuming())
    ids = launch(stack, names(3), user_data)
    cleanup += ids
    # How fast is for bench/ and test_boot_time_of_1_and_15_instances (CPU work, not wall time).
    boot_times = wait_consuming(runner, ids, 30, mark)
    print(f"boot times, 3 instances at once: {sorted(round(t, 2) for t in boot_times.values())}")

    pids = [runner.booted(instance_id)[-1] for instance_id in ids]
    runner_children = {child.pid for child in psutil.Process(runner.process.pid).children()}
    assert set(pids) <= runner_children and all(alive(pid) for pid in pids)

    sent = {tasks.send() for _ in range(6)}
    results = tasks.results(sent)
    # The task finds no such upload and says so: the point is who answered.
    assert {result["instance"] for result in results.values()} <= set(ids)
    assert all(result["outcome"] == "failed" for result in results.values())


def test_a_stopped_instance_loses_only_its_worker(stack, runner, user_data, tasks, cleanup):
    mark = len(runner.consuming())
    ids = launch(stack, names(2), user_data)
    cleanup += ids
    wait_consuming(runner, ids, 30, mark)
    stopped_id, kept_id = ids
    stopped_pid, kept_pid = runner.booted(stopped_id)[-1], runner.booted(kept_id)[-1]

    stack.client("ec2").stop_instances(InstanceIds=[stopped_id])
    # Exit status 0: Celery's warm shutdown on SIGTERM, not the SIGKILL after the grace period.
    wait_until(
        lambda: f"pid {stopped_pid}): worker stopped (exit status 0)" in runner.text(),
        15,
        "the stopped instance's worker to exit",
    )
    assert not alive(stopped_pid) and alive(kept_pid)

    sent = {tasks.send() for _ in range(2)}
    assert {r["instance"] for r in tasks.results(sent).values()} == {kept_id}


def test_a_dead_worker_leaves_its_instance_running_until_restarted(
    stack, runner, user_data, cleanup
):
    mark = len(runner.consuming())
    ids = launch(stack, names(1), user_data)
    cleanup += ids
    [instance_id] = ids
    wait_consuming(runner, ids, 30, mark)
    [pid] = runner.booted(instance_id)

    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: f"pid {pid}): worker exited on its own (exit status -9)" in runner.text(),
        10,
        "the runner to notice the dead worker",
    )
    time.sleep(1.0)  # five runner ticks
    assert state(stack, instance_id) == "running"
    assert runner.booted(instance_id) == [pid], "a dead worker must not be restarted"

    ec2 = stack.client("ec2")
    ec2.stop_instances(InstanceIds=[instance_id])
    wait_until(lambda: state(stack, instance_id) == "stopped", 5, "the instance to stop")
    time.sleep(0.5)  # let the runner see it stopped, as it would on AWS
    mark = len(runner.consuming())
    ec2.start_instances(InstanceIds=[instance_id])
    wait_consuming(runner, {instance_id: time.monotonic()}, 30, mark)
    assert len(runner.booted(instance_id)) == 2


def test_a_boot_script_with_another_configuration_runs_a_fresh_worker(
    stack, runner, user_data, tasks, cleanup
):
    environment = parse_user_data(user_data)
    environment["FACESITE_SELF_STOP_INTERVAL"] = "3599"
    ids = launch(stack, names(1), render_boot_script(environment))
    cleanup += ids
    [instance_id] = ids
    wait_until(lambda: f"({instance_id}): its configuration differs" in runner.text(), 15, "exec")
    # A fresh `manage.py runworker` loads everything itself, then Celery says it is ready.
    ready = re.compile(rf"{instance_id}@\S+ ready\.")
    wait_until(lambda: ready.search(runner.text()), 120, "the fresh worker to be ready")
    sent = {tasks.send() for _ in range(3)}
    assert {r["instance"] for r in tasks.results(sent, timeout=60).values()} == {instance_id}


def test_an_instance_without_a_boot_script_gets_no_worker(stack, runner, cleanup):
    ids = launch(stack, names(1), "#!/bin/sh\necho not facesite\n")
    cleanup += ids
    [instance_id] = ids
    refused = re.compile(rf"\({instance_id}, pid \d+\): worker exited on its own \(exit status 78")
    wait_until(lambda: refused.search(runner.text()), 15, "the runner to refuse the boot script")
    assert f"({instance_id}): cannot boot: its user data" in runner.text()
    assert state(stack, instance_id) == "running"


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_boot_time_of_1_and_15_instances(
    stack, runner, user_data, moto_server, cleanup, record_property
):
    """Instance running -> worker consuming, for one instance and for fifteen at once.

    Every worker must come up; how fast is reported, not asserted (speed targets live in
    benchmarks): wall-clock times depend on whatever else this shared machine runs, so the
    figure to compare with the 3 s target is the work a boot takes: the CPU seconds of the
    workers until they consume, of the runner and of the emulator, spread over this machine's
    CPUs, plus one runner tick, i.e. fifteen simultaneous boots on otherwise idle CPUs."""
    mark = len(runner.consuming())
    ids = launch(stack, names(1), user_data)
    cleanup += ids
    one = wait_consuming(runner, ids, 30, mark)
    stack.client("ec2").terminate_instances(InstanceIds=list(ids))

    runner_cpu, moto_cpu = cpu_seconds(runner.process.pid), cpu_seconds(moto_server.process.pid)
    mark = len(runner.consuming())
    ids = launch(stack, names(15), user_data)
    cleanup += ids
    fifteen = wait_consuming(runner, ids, 120, mark)
    workers_cpu = sum(cpu_seconds(runner.booted(instance_id)[-1]) for instance_id in ids)
    runner_cpu = cpu_seconds(runner.process.pid) - runner_cpu
    moto_cpu = cpu_seconds(moto_server.process.pid) - moto_cpu
    cpus = os.cpu_count() or 1
    unloaded = DEFAULT_INTERVAL + (workers_cpu + runner_cpu + moto_cpu) / cpus

    record_property("boot_seconds_1", round(max(one.values()), 2))
    record_property("boot_seconds_15_max", round(max(fifteen.values()), 2))
    record_property("boot_seconds_15_unloaded", round(unloaded, 2))
    print(
        f"boot time, 1 instance: {max(one.values()):.2f} s; 15 at once: "
        f"{min(fifteen.values()):.2f}-{max(fifteen.values()):.2f} s measured "
        f"(load average {os.getloadavg()[0]:.1f} on {cpus} CPUs), {unloaded:.2f} s on idle CPUs "
        f"(workers {workers_cpu / 15:.2f} CPU-s each, runner {runner_cpu:.2f}, "
        f"emulator {moto_cpu:.2f})"
    )


def test_runner_restart_adopts_instances_and_leaves_no_orphans(moto_server, tmp_path_factory):
    stack = new_stack(moto_server, tmp_path_factory)
    try:
        user_data = worker_user_data(stack)
        # Instances already running before any runner starts.
        ids = launch(stack, names(2), user_data)
        first = start_runner(stack, "instances-1")
        wait_consuming(first, dict.fromkeys(ids, time.monotonic()), 30, mark=0)
        first_workers = [first.booted(i)[-1] for i in ids]

        # A runner killed outright takes its workers with it (PDEATHSIG).
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        wait_until(
            lambda: not any(alive(pid) for pid in first_workers), 15, "orphaned workers to exit"
        )

        # Its successor reads EC2 afresh and boots the instances that are still running.
        second = start_runner(stack, "instances-2")
        wait_consuming(second, dict.fromkeys(ids, time.monotonic()), 30, mark=0)
        second_workers = [second.booted(i)[-1] for i in ids]

        # SIGTERM: every worker is stopped gracefully, then the runner exits cleanly.
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(30) == 0
        assert not any(alive(pid) for pid in second_workers)
        assert "runner stopped" in second.text()
    finally:
        stack.stop_all()
