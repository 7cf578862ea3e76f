"""The local stack (`make run`): the emulator, the database, the web tier, the scaler and the
instance runner on one machine, in the foreground, until Ctrl-C.

Long-running pieces are child processes, each in its own process group (a Ctrl-C at the
terminal reaches only this process, which then stops them in order) and each told by the kernel
to stop if this process dies (PDEATHSIG). Their output goes to var/log/<name>.log. One-off set-up
steps (migrate, provision, buildami) run in this process; enrolling a gallery, which loads the
face models, runs as `manage.py enroll`.

Once running, a service that dies (the front, the web tier, the scaler, the instance runner) is
restarted with backoff and the restart is logged, as systemd restarts a unit on a real web
instance; one that keeps dying (5 restarts in 2 minutes) stops the stack. The emulator is the
exception: its memory is the stack's AWS (buckets, queues, messages, instances), so a new one
would be an empty account that every other service fails against. Its death stops the whole
stack with a message; `make run` again provisions everything afresh.

The web port is nginx's (`FACESITE_FRONT=nginx`, the default): gunicorn listens behind it on a
Unix socket under var/run/. Without nginx (not installable here, or FACESITE_FRONT=none)
gunicorn takes the web port itself, and the stack says what that costs.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from io import TextIOBase
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command, get_commands

from ami.image.lookup import current_image_id
from ami.local import emulator, front
from ami.local.runner import DEFAULT_STOP_GRACE
from ami.local.supervisor import (
    RestartPolicy,
    Service,
    ServiceFailed,
    die_with_parent,
    stop_services,
)
from facesite import aws
from facesite.aws import readers
from facesite.aws.names import WEB_INSTANCE_NAME, Role, State

EMULATOR_READY_TIMEOUT = 20.0
HEALTHY_TIMEOUT = 180.0
WATCH_INTERVAL = 0.25
# Every service but the emulator: restarted after 0.5 s, then 1, 2, 4 ... 30 s while it keeps
# crashing within a minute of its start.
RESTART = RestartPolicy()


class StackError(Exception):
    """The stack cannot start or keep running; the message says which piece and why."""


class StopRequested(Exception):
    """Ctrl-C or SIGTERM while starting."""


class LocalStack:
    def __init__(
        self,
        web_port: int,
        gallery: Path | None,
        out: TextIOBase | IO[str],
        gallery_labels: Path | None = None,
    ) -> None:
        self.web_port = web_port
        self.gallery = gallery
        self.gallery_labels = gallery_labels
        self.out = out
        self.log_dir = Path(settings.VAR_DIR) / "log"
        self.services: list[Service] = []
        self.stop_requested = False
        self.hurry = False  # a second Ctrl-C: kill instead of waiting
        endpoint = urlsplit(settings.AWS_ENDPOINT_URL or "")
        self.emulator_host = endpoint.hostname or ""
        self.emulator_port = endpoint.port or 80
        self.web_url = f"http://127.0.0.1:{web_port}"

    def say(self, line: str) -> None:
        self.out.write(f"{line}\n")
        self.out.flush()

    # --- the whole life --------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, stay until Ctrl-C/SIGTERM or a crash; returns the exit status."""
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        try:
            self.start()
            self.say_where_everything_is()
            return self.watch()
        except StopRequested:
            return 0
        except StackError as error:
            self.say(f"ERROR: {error}")
            return 1
        finally:
            self.stop_all()

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            self.hurry = True
        self.stop_requested = True

    def check_stop(self) -> None:
        if self.stop_requested:
            raise StopRequested

    # --- starting ---------------------------------------------------------------------------

    def start(self) -> None:
        if not settings.AWS_ENDPOINT_URL or self.emulator_host not in ("127.0.0.1", "localhost"):
            raise StackError(
                "the local stack runs its own emulator on loopback, but FACESITE_AWS_ENDPOINT is "
                f"{settings.AWS_ENDPOINT_URL or 'empty (real AWS)'}: unset it, or set it to "
                "http://127.0.0.1:<port>"
            )
        require_free_port(self.emulator_port, "the AWS emulator", "FACESITE_AWS_ENDPOINT")
        require_free_port(self.web_port, "the web tier", "--port")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        bin_dir = Path(sys.executable).parent

        self.say(f"Starting the AWS emulator on {settings.AWS_ENDPOINT_URL}")
        moto = self.add(
            "moto",
            emulator.command(self.emulator_port),
            stop_timeout=10,
        )
        self.wait_until(self.emulator_ready, EMULATOR_READY_TIMEOUT, "the emulator", [moto])

        self.set_up()

        self.say("Starting the instance runner, the scaler and the web tier")
        runner = self.add(
            "instances",
            [python, manage, "runinstances"],
            stop_timeout=DEFAULT_STOP_GRACE + 5,
            restart=RESTART,
        )
        watched = [moto, runner]
        if "runscaler" in get_commands():
            watched.append(
                self.add("scaler", [python, manage, "runscaler"], stop_timeout=10, restart=RESTART)
            )
        else:
            self.say("WARNING: no `manage.py runscaler` in this checkout: nothing will scale")
        front_argv, web_bind = self.plan_front()
        web = self.add(
            "web",
            [str(bin_dir / "gunicorn"), "-c", "recognition/web/gunicorn.py", "facesite.wsgi"],
            stop_timeout=20,
            env={"FACESITE_BIND": web_bind},
            restart=RESTART,
        )
        watched.append(web)
        if front_argv:
            watched.append(self.add("front", front_argv, stop_timeout=10, restart=RESTART))
        self.wait_until(self.web_healthy, HEALTHY_TIMEOUT, "the web tier's /healthz", watched)

    def plan_front(self) -> tuple[list[str] | None, str]:
        """nginx's command line (None for no front) and the address gunicorn binds to."""
        direct = f"127.0.0.1:{self.web_port}"
        if settings.FACESITE_FRONT == "none":
            return None, direct
        try:
            nginx = front.ensure_nginx(self.log_dir / "setup.log")
        except front.FrontUnavailable as error:
            self.say(
                f"WARNING: {error}.\n  gunicorn serves port {self.web_port} itself, without the "
                "nginx front: clients that send their requests slowly can hold all of its "
                "threads. (FACESITE_FRONT=none says this is intended.)"
            )
            return None, direct
        var_dir = Path(settings.VAR_DIR)
        socket_path = front.upstream_socket(var_dir)
        config = front.write_config(
            front.FrontConfig(
                listen=direct,
                upstream=socket_path,
                run_dir=var_dir / "run" / "front",
                log_dir=self.log_dir,
                max_upload_bytes=settings.FACESITE_MAX_UPLOAD_BYTES,
                reply_timeout=settings.FACESITE_REPLY_TIMEOUT,
            )
        )
        return front.command(nginx, config), f"unix:{socket_path}"

    def set_up(self) -> None:
        """The one-off steps, in this process, output to var/log/setup.log."""
        with open(self.log_dir / "setup.log", "a") as log:
            log.write(f"=== set-up {datetime.now(UTC).isoformat()}\n")
            for command, args in (
                ("migrate", ["--no-input"]),
                ("provision", []),
                ("buildami", []),
            ):
                self.check_stop()
                self.say(f"Running manage.py {command}")
                log.write(f"--- manage.py {command}\n")
                log.flush()
                try:
                    call_command(command, *args, stdout=log, stderr=log)
                except Exception as error:
                    raise StackError(f"manage.py {command} failed: {error}") from error
            self.ensure_web_instance()
            self.ensure_admin()
            if self.gallery:
                self.enroll(self.gallery, log)
        # Nothing of ours holds the database while the services run.
        from django.db import connections

        connections.close_all()

    def ensure_web_instance(self) -> None:
        """A running `web-instance` in the emulator: the web tier as the course shows it."""
        ec2 = aws.client("ec2")
        existing = [
            instance
            for instance in readers.instances(
                ec2,
                settings.FACESITE_PREFIX,
                Role.WEB,
                states=[State.PENDING, State.RUNNING, State.STOPPED],
            )
            if instance.name == WEB_INSTANCE_NAME
        ]
        if not existing:
            ec2.run_instances(
                ImageId=current_image_id(),
                InstanceType="t3.micro",
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[
                    {
                        "ResourceType": "instance",
                        "Tags": aws.names().tags(Role.WEB, WEB_INSTANCE_NAME),
                    }
                ],
            )
        elif existing[0].state == State.STOPPED:
            ec2.start_instances(InstanceIds=[existing[0].id])

    def ensure_admin(self) -> None:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            self.say("Admin user: exists (its password is unchanged)")
            return
        password = settings.FACESITE_ADMIN_PASSWORD
        users.create_superuser("admin", "", password)
        self.say(f"Admin user created: admin / {password}")

    def enroll(self, gallery: Path, log: IO[str]) -> None:
        self.say(f"Enrolling the gallery in {gallery} (log: {log.name})")
        argv = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "enroll", str(gallery)]
        if self.gallery_labels:
            argv += ["--labels", str(self.gallery_labels)]
        log.write(f"--- {' '.join(argv[1:])}\n")
        log.flush()
        enroll = subprocess.Popen(
            argv,
            cwd=settings.BASE_DIR,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        try:
            while enroll.poll() is None:
                self.check_stop()
                time.sleep(WATCH_INTERVAL)
        finally:
            if enroll.poll() is None:
                enroll.kill()
                enroll.wait()
        if enroll.returncode != 0:
            raise StackError(f"manage.py enroll {gallery} failed: see {log.name}")

    def add(
        self,
        name: str,
        argv: list[str],
        stop_timeout: float,
        env: dict[str, str] | None = None,
        restart: RestartPolicy | None = None,
    ) -> Service:
        service = Service(
            name,
            argv,
            self.log_dir / f"{name}.log",
            settings.BASE_DIR,
            stop_timeout,
            env or {},
            restart=restart,
        )
        service.start()
        self.services.append(service)
        return service

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, what: str, watched: list[Service]
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            self.check_stop()
            self.raise_if_died(watched)
            if time.monotonic() > deadline:
                raise StackError(f"{what} was not ready after {timeout:.0f} s; see {self.log_dir}")
            time.sleep(WATCH_INTERVAL)

    def raise_if_died(self, services: list[Service]) -> None:
        for service in services:
            status = service.exit_status()
            if status is not None:
                raise StackError(
                    f"{service.name} exited unexpectedly (status {status}); the end of "
                    f"{service.log_path}:\n{service.log_tail()}"
                )

    def emulator_ready(self) -> bool:
        return http_status(f"{settings.AWS_ENDPOINT_URL}/moto-api/", timeout=2) == 200

    def web_healthy(self) -> bool:
        # A web process's first request imports the rest of the app: give it time rather than
        # piling up retries.
        return http_status(f"{self.web_url}/healthz", timeout=15) == 200

    def say_where_everything_is(self) -> None:
        self.say(
            "\n".join(
                [
                    "",
                    "facesite is running:",
                    f"  web        {self.web_url}/  (POST / with the image in field inputFile)",
                    f"  health     {self.web_url}/healthz",
                    f"  admin      {self.web_url}/admin/",
                    "  front      "
                    + (
                        "nginx, gunicorn behind it on a Unix socket"
                        if any(s.name == "front" for s in self.services)
                        else "none: gunicorn serves the web port itself"
                    ),
                    f"  emulator   {settings.AWS_ENDPOINT_URL}  "
                    f"(prefix {settings.FACESITE_PREFIX})",
                    f"  logs       {self.log_dir}/  ({', '.join(s.name for s in self.services)})",
                    "A service that dies is restarted (the emulator's death stops everything).",
                    "Ctrl-C stops everything.",
                ]
            )
        )

    # --- running and stopping ---------------------------------------------------------------

    def watch(self) -> int:
        """Restart what dies until Ctrl-C; 1 when a service can't be restarted (the emulator,
        or one that keeps dying)."""
        while not self.stop_requested:
            try:
                for service in self.services:
                    service.supervise(self.say)
            except ServiceFailed as error:
                self.say(f"ERROR: {error}\nStopping everything.")
                return 1
            time.sleep(WATCH_INTERVAL)
        return 0

    def stop_all(self) -> None:
        """Web, scaler and runner first (the runner lets workers finish their task), then the
        emulator they all talk to."""
        running = any(service.exit_status() is None for service in self.services)
        if running:
            self.say("Stopping (Ctrl-C again to kill at once)")
        emulator = [s for s in self.services if s.name == "moto"]
        self.stop_services([s for s in self.services if s.name != "moto"])
        self.stop_services(emulator)
        if running:
            self.say("Stopped.")

    def stop_services(self, services: list[Service]) -> None:
        stop_services(services, say=self.say, hurry=lambda: self.hurry)


def require_free_port(port: int, what: str, setting: str) -> None:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(
                f"port {port} for {what} is taken (another `make run`?): stop whatever holds "
                f"it, or choose another port with {setting}"
            ) from None


def http_status(url: str, timeout: float) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None
