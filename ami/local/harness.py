"""Real processes for end-to-end tests and benchmarks: a moto server, `manage.py` commands,
Celery workers and gunicorn, each configured only through environment variables, as in
production, and each a `Service` of the local stack's supervisor.

Every stack gets its own prefix, database and log directory, so tests never touch a running
`make run` (which owns ports 5000 and 8000) or each other.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

from ami.local import emulator, front
from ami.local.supervisor import Service, stop_services
from facesite.aws import readers
from facesite.aws.names import Names, Role
from facesite.config import BASE_DIR, FacesiteConfig

REPO_DIR = BASE_DIR
# The labelled photos tests and benchmarks use: ../shared/datasets beside the clone.
DATASETS_DIR = REPO_DIR.parent / "shared" / "datasets"
COURSE_DIR = DATASETS_DIR / "course"
FIVE_CELEBRITY_DIR = DATASETS_DIR / "five_celebrity"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class MotoServer:
    """The emulator (moto's server) in a subprocess on a free loopback port; `env` configures
    it (FACESITE_EMULATOR_REALISM=aws and its scale, say)."""

    def __init__(self, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.service = Service(
            "moto",
            emulator.command(self.port),
            log_dir / "moto.log",
            REPO_DIR,
            env=env or {},
        )
        self.process = self.service.start()
        wait_until(self._ready, 20, "moto server")

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.endpoint}/moto-api/", timeout=1).ok
        except requests.RequestException:
            return False

    def client(self, service: str, config: Config | None = None):
        """A boto3 client of this emulator (botocore's `config`, retries say, when given)."""
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="facesite-test",
            aws_secret_access_key="facesite-test",
            config=config,
        )

    def stop(self) -> None:
        stop_services([self.service])

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Stack:
    """One facesite deployment (prefix + database) on a shared moto server."""

    def __init__(self, moto: MotoServer, work_dir: Path, **settings: str) -> None:
        self.moto = moto
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.work_dir = work_dir
        self.log_dir = work_dir / "log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = work_dir / "db.sqlite3"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "facesite.settings",
            "FACESITE_AWS_ENDPOINT": moto.endpoint,
            "FACESITE_PREFIX": self.prefix,
            "FACESITE_DB_PATH": str(self.db_path),
            "FACESITE_VAR_DIR": str(work_dir),
            "AWS_ACCESS_KEY_ID": "facesite-test",
            "AWS_SECRET_ACCESS_KEY": "facesite-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
            # As on an app-tier instance: one torch thread per worker process.
            "FACESITE_ENGINE_THREADS": "1",
            **settings,
        }
        self.names = Names(self.prefix, "us-east-1", "123456789012", moto.endpoint)
        self.services: list[Service] = []
        self.web_url = ""

    # --- AWS as the tests see it --------------------------------------------------------------

    def client(self, service: str):
        return self.moto.client(service)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def queue_url(self, suffix: str) -> str:
        return self.client("sqs").get_queue_url(QueueName=self.name(suffix))["QueueUrl"]

    def queue_depth(self, suffix: str) -> tuple[int, int]:
        depth = readers.queue_depth(self.client("sqs"), self.queue_url(suffix))
        return depth.visible, depth.in_flight

    def bucket_keys(self, suffix: str) -> list[str]:
        listing = self.client("s3").list_objects_v2(Bucket=self.name(suffix))
        return [item["Key"] for item in listing.get("Contents", [])]

    def app_tier_states(self) -> Counter:
        """How many of this stack's app-tier instances are in each EC2 state."""
        records = readers.instances(self.client("ec2"), self.prefix, Role.APP_TIER)
        return Counter(str(record.state) for record in records)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Rows from the stack's database: PostgreSQL when FACESITE_DATABASE_URL is set (SQL
        with %s placeholders), else its SQLite file (? placeholders)."""
        if self.env.get("FACESITE_DATABASE_URL"):
            import psycopg

            with psycopg.connect(self.env["FACESITE_DATABASE_URL"]) as db:
                return db.execute(sql, params).fetchall()
        with sqlite3.connect(self.db_path, timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def create_staff_user(self, username: str, password: str) -> None:
        """A superuser, for the admin and the dashboard."""
        self.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model; "
            f"get_user_model().objects.create_superuser({username!r}, '', {password!r})",
        )

    # --- processes ----------------------------------------------------------------------------

    def manage(
        self, *args: str, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_DIR,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result

    def spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        service = Service(
            name, args, self.log_dir / f"{name}.log", REPO_DIR, 20, {**self.env, **env}
        )
        self.services.append(service)
        return service.start()

    def deploy(self, gallery_dir: Path) -> None:
        """Create the database, the buckets and queues, and enroll `gallery_dir`."""
        self.manage("migrate")
        self.manage("provision")
        self.manage("enroll", str(gallery_dir))

    def start_worker(self, name: str = "worker", **env: str) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        worker = self.spawn(name, [sys.executable, "manage.py", "runworker"], **env)
        wait_until(lambda: b"ready." in log.read_bytes()[offset:], 60, f"{name} ready")
        return worker

    def start_web(
        self, name: str = "web", processes: int = 2, with_front: bool = False, **env: str
    ) -> str:
        """gunicorn on a free port; ``with_front``: behind nginx (as `make run` serves it), on a
        Unix socket, with nginx on the free port. Returns the URL clients use."""
        port = free_port()
        bind = f"127.0.0.1:{port}"
        if with_front:
            socket_path = front.upstream_socket(self.work_dir / name)
            bind = f"unix:{socket_path}"
            self.spawn(
                f"{name}-front",
                front.command(
                    front.ensure_nginx(self.log_dir / f"{name}-front-install.log"),
                    front.write_config(
                        front.FrontConfig(
                            listen=f"127.0.0.1:{port}",
                            upstream=socket_path,
                            run_dir=self.work_dir / name / "front",
                            log_dir=self.log_dir,
                            max_upload_bytes=int(self.setting("max_upload_bytes")),
                            reply_timeout=float(self.setting("reply_timeout")),
                        )
                    ),
                ),
            )
        self.spawn(
            name,
            [str(VENV_BIN / "gunicorn"), "-c", "recognition/web/gunicorn.py", "facesite.wsgi"],
            FACESITE_BIND=bind,
            FACESITE_WEB_PROCESSES=str(processes),
            **env,
        )
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), 60, f"{name} healthy")
        self.web_url = self.web_url or url
        return url

    def setting(self, field: str) -> str:
        """A FACESITE_ setting as this stack's processes see it (their environment, else the
        configuration's default)."""
        default = FacesiteConfig.model_fields[field].default
        return self.env.get(f"FACESITE_{field.upper()}", str(default))

    def start_elastic_tier(self) -> None:
        """The worker image, the autoscaler and the local instance runner: instances come and
        go with the load, each running one turned into a worker process by the runner."""
        self.manage("buildami")
        self.spawn("runner", [sys.executable, "manage.py", "runinstances"])
        self.spawn("scaler", [sys.executable, "manage.py", "runscaler"])
        # Until its pre-warmed zygote is ready the runner can't boot workers quickly.
        runner_log = self.log_dir / "runner.log"
        wait_until(lambda: b"zygote ready" in runner_log.read_bytes(), 120, "the runner's zygote")

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [service.process for service in self.services if service.process is not None]

    def stop(self, process: subprocess.Popen, timeout: float = 20) -> None:
        """Stop one process this stack spawned (SIGTERM, SIGKILL after `timeout`)."""
        service = next(s for s in self.services if s.process is process)
        service.stop_timeout = timeout
        stop_services([service])

    def stop_all(self) -> None:
        stop_services(self.services)
        self.services.clear()


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the sampler started
    visible: int
    in_flight: int
    running: int
    pending: int


class FleetSampler(threading.Thread):
    """Samples queue depths and app-tier instances every `interval` seconds, like the course's
    grader, until stopped."""

    def __init__(self, stack: Stack, interval: float = 0.25) -> None:
        super().__init__(name="fleet-sampler", daemon=True)
        self.stack = stack
        self.interval = interval
        self.samples: list[Sample] = []
        self.started_at = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tick = time.monotonic()
            visible, in_flight = self.stack.queue_depth("req-queue")
            states = self.stack.app_tier_states()
            self.samples.append(
                Sample(
                    tick - self.started_at,
                    visible,
                    in_flight,
                    states["running"],
                    states["pending"],
                )
            )
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - tick)))

    def stop(self) -> list[Sample]:
        self._stop_event.set()
        self.join()
        return self.samples

    def now(self) -> float:
        return time.monotonic() - self.started_at


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def upload(
    url: str, path: Path, name: str | None = None, timeout: float = 120
) -> requests.Response:
    with open(path, "rb") as image:
        return requests.post(url, files={"inputFile": (name or path.name, image)}, timeout=timeout)


@contextlib.contextmanager
def scratch_stack(
    emulator_env: dict[str, str] | None = None, **settings: str
) -> Iterator[tuple[Stack, Path]]:
    """A stack on its own emulator (configured by `emulator_env`) in a scratch folder, for the
    benchmarks; stopped at exit."""
    with tempfile.TemporaryDirectory(prefix="facesite-bench-") as scratch:
        work = Path(scratch)
        moto = MotoServer(work, env=emulator_env)
        stack = Stack(moto, work, **settings)
        try:
            yield stack, work
        finally:
            stack.stop_all()
            moto.stop()


def course_labels(course_dir: Path, set_name: str) -> dict[str, str]:
    """Image stem -> label, from the course's labels_<set>.csv."""
    with open(course_dir / f"labels_{set_name}.csv", newline="") as labels:
        return {row["Image"]: row["Results"] for row in csv.DictReader(labels)}


def make_course_gallery(course_dir: Path, gallery: Path) -> Path:
    """The ten distinct course photos (test_00..test_09), one folder per label, for `enroll`."""
    labels = course_labels(course_dir, "100")
    for index in range(10):
        stem = f"test_{index:02d}"
        folder = gallery / labels[stem]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(course_dir / "face_images_100" / f"{stem}.jpg", folder)
    return gallery
