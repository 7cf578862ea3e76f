"""`manage.py runstack` (what `make run` runs), as a real process on free ports under a prefix,
database and var directory of its own, so it never meets a running `make run`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import psutil
import pytest
import requests

from ami.local.harness import REPO_DIR, course_labels, free_port, wait_until

pytestmark = pytest.mark.e2e

START_TIMEOUT = 300  # torch imports in several processes at once, on a machine others share


class RunningStack:
    def __init__(self, work_dir: Path, **env: str) -> None:
        self.aws_port, self.web_port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.aws_port}"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.prefix = f"s{uuid.uuid4().hex[:10]}"
        self.var_dir = work_dir
        self.output_path = work_dir / "runstack.out"
        self.env = {
            **os.environ,
            "FACESITE_AWS_ENDPOINT": self.endpoint,
            "FACESITE_PREFIX": self.prefix,
            "FACESITE_VAR_DIR": str(work_dir),
            "FACESITE_DB_PATH": str(work_dir / "db.sqlite3"),
            "FACESITE_ADMIN_PASSWORD": "stack-test-password",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "runstack", "--port", str(self.web_port)],
                cwd=REPO_DIR,
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the test signals runstack alone, like a terminal would
            )
        return self.process

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_running(self) -> None:
        assert self.process is not None
        wait_until(
            lambda: "facesite is running" in self.output() or self.process.poll() is not None,
            START_TIMEOUT,
            "runstack to start",
        )
        assert self.process.poll() is None, self.output()

    def descendants(self) -> list[psutil.Process]:
        """Everything runstack started: its children live in process groups of their own."""
        assert self.process is not None
        return psutil.Process(self.process.pid).children(recursive=True)

    def ec2(self):
        return boto3.client(
            "ec2",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def kill(self) -> None:
        """Last-resort clean-up for a failed test: nothing may outlive it."""
        if self.process is not None and self.process.poll() is None:
            leftovers = self.descendants()
            self.process.kill()
            self.process.wait(10)
            for process in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


def gone(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


@pytest.fixture
def running_stack(tmp_path):
    stack = RunningStack(tmp_path)
    stack.start()
    yield stack
    stack.kill()


def test_the_stack_serves_an_upload_and_ctrl_c_stops_everything(
    tmp_path, course_dir, course_gallery_dir
):
    stack = RunningStack(tmp_path, FACESITE_GALLERY_DIR=str(course_gallery_dir))
    stack.start()
    try:
        serve_an_upload_then_stop(
            stack,
            course_dir / "face_images_100" / "test_00.jpg",
            expected=course_labels(course_dir, "100")["test_00"],
        )
    finally:
        stack.kill()


def test_make_run_with_aws_timing_creates_the_roles_and_serves(
    tmp_path, course_dir, course_gallery_dir
):
    """`FACESITE_EMULATOR_REALISM=aws make run`: the same roles as on an account, and the whole
    path works with instances pending before running (at a fifth of AWS's delays)."""
    stack = RunningStack(
        tmp_path,
        FACESITE_GALLERY_DIR=str(course_gallery_dir),
        FACESITE_EMULATOR_REALISM="aws",
        FACESITE_EMULATOR_TIME_SCALE="0.2",
    )
    stack.start()
    try:
        stack.wait_running()
        iam = boto3.client(
            "iam",
            endpoint_url=stack.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        roles = {role["RoleName"] for role in iam.list_roles()["Roles"]}
        assert {f"{stack.prefix}-worker", f"{stack.prefix}-web", f"{stack.prefix}-scaler"} <= roles
        assert "emulator realism: aws" in (stack.var_dir / "log" / "moto.log").read_text()
        serve_an_upload_then_stop(
            stack,
            course_dir / "face_images_100" / "test_00.jpg",
            expected=course_labels(course_dir, "100")["test_00"],
        )
    finally:
        stack.kill()


def serve_an_upload_then_stop(stack: RunningStack, image_path: Path, expected: str) -> None:
    stack.wait_running()
    output = stack.output()
    assert "Enrolling the gallery" in output
    assert f"web        {stack.web_url}/" in output
    assert "Admin user created: admin / stack-test-password" in output
    # Each gunicorn process imports the app on its first request: allow for a cold one.
    assert requests.get(f"{stack.web_url}/healthz", timeout=60).status_code == 200

    web_instances = stack.ec2().describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": ["web-instance"]},
            {"Name": "tag:facesite:prefix", "Values": [stack.prefix]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
    )["Reservations"]
    assert len(web_instances) == 1

    # Through every piece: web -> SQS -> scaler starts an instance -> runner boots its worker,
    # which knows the enrolled gallery.
    with open(image_path, "rb") as image:
        upload = {"inputFile": ("test_00.jpg", image)}
        reply = requests.post(stack.web_url, files=upload, timeout=120)
    assert (reply.status_code, reply.text) == (200, f"test_00:{expected}")

    for name in ("moto", "instances", "scaler", "web", "setup"):
        assert (stack.var_dir / "log" / f"{name}.log").stat().st_size > 0

    started = stack.descendants()
    stack.process.send_signal(signal.SIGINT)
    assert stack.process.wait(90) == 0, stack.output()
    assert "Stopped." in stack.output()
    wait_until(lambda: gone(started), 10, "every process runstack started to exit")
    for port in (stack.aws_port, stack.web_port):
        with socket.socket() as probe:
            # Nothing listens any more (connections may linger in TIME_WAIT).
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))


def child(stack: RunningStack, fragment: str) -> psutil.Process:
    """The service runstack started whose command line contains ``fragment``."""
    assert stack.process is not None

    def matches(process: psutil.Process) -> bool:
        try:
            return fragment in " ".join(process.cmdline())
        except psutil.Error:  # exited (or a zombie not yet reaped)
            return False

    return next(p for p in psutil.Process(stack.process.pid).children() if matches(p))


def replaced(stack: RunningStack, fragment: str, old_pid: int) -> bool:
    try:
        return child(stack, fragment).pid != old_pid
    except StopIteration:
        return False


def healthy(stack: RunningStack) -> bool:
    try:
        return requests.get(f"{stack.web_url}/healthz", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def test_crashed_services_are_restarted_and_a_dead_emulator_stops_the_stack(running_stack):
    stack = running_stack
    stack.wait_running()
    assert "front      nginx" in stack.output()

    # The scaler, SIGKILLed as an OOM killer would: a new one within 5 s, the stack serving.
    scaler = child(stack, "runscaler")
    scaler.kill()
    killed = time.monotonic()
    wait_until(lambda: replaced(stack, "runscaler", scaler.pid), 5, "a new scaler")
    assert time.monotonic() - killed < 5
    assert "scaler exited unexpectedly (status -9); restarting it in 0.5 s" in stack.output()
    # Said just after the new process is started: the test may see the process first.
    wait_until(
        lambda: "scaler restarted (restart 1)" in stack.output(), 5, "the restart to be reported"
    )

    # The web tier's gunicorn master and the nginx front: each replaced, the stack healthy again.
    for fragment, name in (("gunicorn", "web"), ("nginx", "front")):
        process = child(stack, fragment)
        process.kill()
        wait_until(lambda f=fragment, p=process: replaced(stack, f, p.pid), 10, f"a new {name}")
        wait_until(lambda: healthy(stack), 120, f"the stack healthy after {name} was killed")
        assert f"{name} restarted (restart 1)" in stack.output()

    # The emulator holds the stack's whole AWS state: its death stops everything.
    started = stack.descendants()
    child(stack, "ami.local.emulator").kill()
    assert stack.process.wait(90) == 1
    assert "moto exited unexpectedly" in stack.output()
    wait_until(lambda: gone(started), 10, "every process runstack started to exit")


def test_a_taken_emulator_port_is_refused_clearly(tmp_path):
    stack = RunningStack(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.aws_port))
        squatter.listen()
        process = stack.start()
        assert process.wait(120) == 1
    assert f"port {stack.aws_port} for the AWS emulator is taken" in stack.output()
