"""The local instance runner: every running emulated app-tier instance becomes a worker process.

On AWS an instance boots, cloud-init runs its user data, the user data starts the worker's
systemd unit, and stopping the instance SIGTERMs the worker. moto keeps only the instance's
state, so this process plays the machines. Every `interval` it reads this deployment's running
app-tier instances from the emulator's EC2 API (which are running comes from EC2 on every tick,
each instance's tags once: `facesite.aws.readers.ListedInstances`; so it works the same for
instances created before it started and after its own restart), and

- boots each running instance that has no worker: runs the instance's user data (the boot
  script from ami/image/bootscript.py) as a worker process;
- sends SIGTERM to the worker of each instance that is no longer running (Celery's warm
  shutdown: the task in hand finishes), and SIGKILL `stop_grace` seconds later;
- leaves an instance whose worker died on its own running without a worker, as on AWS, and
  boots it again only after the instance was stopped (or terminated) and started.

Booting has to beat EC2 by far, even for 15 instances at once on two cores, and importing
torch, Django and Celery and loading the face models takes seconds. So this process is a zygote:
it does all of that once, then forks one child per instance, which only has to open its own
connections and start consuming. A boot script whose configuration differs from the zygote's
(another prefix, say) is run the slow way instead: the child execs `manage.py runworker` with
that environment.

Fork safety: the zygote stays single-threaded (a thread could hold a lock at the fork, which the
child would then wait on forever) and never runs a torch op on more than one thread (an OpenMP
thread pool does not survive a fork: the child's first parallel op would hang). It counts its
OS threads before every fork and execs instead of forking if that count is ever above one.
`manage.py runinstances` starts the interpreter with native thread pools pinned to one thread,
since numpy's OpenBLAS would otherwise start its threads on import. Children die with the runner
(PDEATHSIG), so a restarted runner never finds orphans.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import importlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from ami.image.bootscript import parse_user_data, worker_environment
from ami.local.supervisor import die_with_parent
from facesite import aws
from facesite.aws import readers
from facesite.aws.names import Role, State, app_tier_number

logger = logging.getLogger(__name__)

# Each describe costs the emulator's single core a noticeable share: twice a second is enough to
# boot a worker well within 3 s of its instance starting.
DEFAULT_INTERVAL = 0.5
# Longer than any task, so a warm shutdown is never cut short in practice.
DEFAULT_STOP_GRACE = 30.0
# What a worker imports between the fork and "ready" (Celery 5.7, kombu's SQS transport) plus
# the tasks, which import the engine: imported once in the zygote, so children import nothing.
# A module missing here only costs boot time. Some scan entry points when imported.
WORKER_MODULES = (
    "billiard.pool",
    "celery.app.amqp",
    "celery.app.control",
    "celery.app.events",
    "celery.app.log",
    "celery.app.routes",
    "celery.apps.worker",
    "celery.backends.base",
    "celery.bin.celery",
    "celery.concurrency.solo",
    "celery.contrib.django.task",
    "celery.events",
    "celery.worker.autoscale",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.consumer.delayed_delivery",
    "celery.worker.strategy",
    "celery.worker.worker",
    "kombu.asynchronous.aws.sqs.connection",
    "kombu.matcher",
    "kombu.mixins",
    "kombu.pidbox",
    "kombu.transport.SQS",
    "recognition.worker.tasks",
    "recognition.worker.api_tasks",
)
# Exit status of a child whose user data is not a facesite boot script (sysexits' EX_CONFIG).
EXIT_BAD_USER_DATA = 78


@dataclass
class Worker:
    """A worker process and the instance it plays."""

    instance_id: str
    name: str
    pid: int
    # Monotonic time at which a worker that was sent SIGTERM gets SIGKILL; None while it runs.
    kill_at: float | None = None
    killed: bool = False  # SIGKILL sent

    def __str__(self) -> str:
        return f"{self.name} ({self.instance_id}, pid {self.pid})"


class InstanceRunner:
    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        self.interval = interval
        self.stop_grace = stop_grace
        self.prefix = settings.FACESITE_PREFIX
        self.running = readers.ListedInstances(self.prefix, Role.APP_TIER, states=[State.RUNNING])
        self.workers: dict[int, Worker] = {}  # every live child, by pid, stopping ones included
        self.booted: dict[str, Worker] = {}  # the current worker of each running instance
        # Running instances whose worker ended on its own (or never booted): left alone until
        # their instance is seen not running.
        self.abandoned: set[str] = set()
        self.environment: dict[str, str] = {}  # the worker configuration the zygote holds
        self.stopping = False
        self.hurry = False  # a second SIGTERM/SIGINT: kill the workers without waiting
        self._ec2_failing = False

    # --- the zygote -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Load everything a worker needs, once, before the first fork."""
        started = time.monotonic()
        import torch

        # Before any torch op: with one thread torch never starts its OpenMP pool in the zygote.
        torch.set_num_threads(1)
        for module in WORKER_MODULES:
            importlib.import_module(module)
        from facesite.celery_app import app
        from recognition.engine import get_engine

        # Resolving the (disabled) result backend scans every installed package's entry points;
        # done here, the children inherit the answer.
        app.backend  # noqa: B018
        get_engine()
        self.environment = worker_environment()
        # Parse the service models a worker uses into the process's boto3 session (clients are
        # then cheap to build), but share no connection: children open their own.
        for service in ("s3", "sqs", "ec2"):
            aws.client(service)
        from django.db import connections

        connections.close_all()
        aws.reset_clients()
        # Objects that exist now are never collected, so children don't copy their pages when
        # the garbage collector would touch them.
        gc.collect()
        gc.freeze()
        logger.info(
            "zygote ready in %.1f s (prefix %s, %d OS thread%s)",
            time.monotonic() - started,
            self.prefix,
            os_thread_count(),
            "" if os_thread_count() == 1 else "s",
        )

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        """Watch EC2 and run workers until SIGTERM or SIGINT, then stop every worker."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        logger.info(
            "watching app-tier instances of prefix %s every %.2f s", self.prefix, self.interval
        )
        try:
            while not self.stopping:
                tick_started = time.monotonic()
                self.tick()
                time.sleep(max(0.0, self.interval - (time.monotonic() - tick_started)))
        finally:
            # Also on a crash: workers get their warm shutdown rather than a PDEATHSIG.
            self.shutdown()

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            self.hurry = True
        self.stopping = True

    def tick(self) -> None:
        self.reap()
        running = self.running_instances()
        seen_at = time.time()
        if running is not None:  # on an EC2 error nothing changes: an outage stops no worker
            for instance_id, worker in list(self.booted.items()):
                if instance_id not in running:
                    self.stop(worker, "its instance is no longer running")
            self.abandoned &= running.keys()
            to_boot = {
                instance_id: name
                for instance_id, name in running.items()
                if instance_id not in self.booted and instance_id not in self.abandoned
            }
            # All the EC2 calls first, then the forks back to back: once children run they
            # compete with this loop for the CPU.
            user_data = {
                instance_id: data
                for instance_id, name in to_boot.items()
                if (data := self.user_data(instance_id, name)) is not None
            }
            for instance_id, data in user_data.items():
                self.boot(instance_id, to_boot[instance_id], data, seen_at)
        self.kill_overdue()

    def running_instances(self) -> dict[str, str] | None:
        """This deployment's running app-tier instances (id -> name), or None if EC2 failed."""
        try:
            instances = self.running.read(aws.client("ec2"))
        except (BotoCoreError, ClientError) as error:
            if not self._ec2_failing:
                logger.warning("cannot read instances from EC2 (%s); retrying", error)
                self._ec2_failing = True
            return None
        if self._ec2_failing:
            logger.info("EC2 answers again")
            self._ec2_failing = False
        # The scaler ignores misnamed instances; so does the runner.
        return {i.id: i.name for i in instances if app_tier_number(i.name) is not None}

    def user_data(self, instance_id: str, name: str) -> str | None:
        """The instance's user data ("" if it has none), or None if EC2 failed."""
        try:
            attribute = aws.client("ec2").describe_instance_attribute(
                InstanceId=instance_id, Attribute="userData"
            )
        except (BotoCoreError, ClientError) as error:
            logger.warning("%s (%s): cannot read its user data (%s)", name, instance_id, error)
            return None
        encoded = attribute.get("UserData", {}).get("Value", "")
        return base64.b64decode(encoded).decode(errors="replace") if encoded else ""

    def boot(self, instance_id: str, name: str, user_data: str, seen_running_at: float) -> None:
        """Fork the instance's worker."""
        fork_safe = os_thread_count() == 1
        if not fork_safe:
            logger.error("the zygote has several threads: booting %s by exec, not fork", name)
        flush_output()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as error:  # out of memory or processes: the next tick tries again
            logger.error("%s (%s): cannot fork its worker: %s", name, instance_id, error)
            return
        if pid == 0:
            self._child(instance_id, name, user_data, seen_running_at, parent, fork_safe)
        worker = Worker(instance_id, name, pid)
        self.workers[pid] = worker
        self.booted[instance_id] = worker
        logger.info("%s is running: booting its worker", worker)

    def stop(self, worker: Worker, reason: str) -> None:
        logger.info("%s: %s, stopping its worker (SIGTERM)", worker, reason)
        self.booted.pop(worker.instance_id, None)
        worker.kill_at = time.monotonic() + self.stop_grace
        signal_process(worker.pid, signal.SIGTERM)

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.kill_at is None or worker.killed:
                continue
            if self.hurry or now >= worker.kill_at:
                logger.warning("%s: still running, killing its worker (SIGKILL)", worker)
                signal_process(worker.pid, signal.SIGKILL)
                worker.killed = True

    def reap(self) -> None:
        """Collect every exited child (no zombies) and say what became of its instance."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if worker.kill_at is not None:
                logger.info("%s: worker stopped (exit status %d)", worker, code)
                continue
            self.booted.pop(worker.instance_id, None)
            self.abandoned.add(worker.instance_id)
            logger.warning(
                "%s: worker exited on its own (exit status %d); the instance keeps running "
                "without a worker until it is stopped and started again",
                worker,
                code,
            )

    def shutdown(self) -> None:
        """Stop every worker gracefully (SIGKILL after the grace period) and wait for them."""
        for worker in list(self.workers.values()):
            if worker.kill_at is None:
                self.stop(worker, "the runner is stopping")
        while self.workers:
            self.reap()
            self.kill_overdue()
            time.sleep(0.05)
        logger.info("runner stopped")

    # --- a child: one instance's worker ---------------------------------------------------

    def _child(
        self,
        instance_id: str,
        name: str,
        user_data: str,
        seen_running_at: float,
        parent: int,
        fork_safe: bool,
    ) -> NoReturn:
        """Run one instance's boot script in this forked child; never returns."""
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            die_with_parent(signal.SIGTERM)
            if os.getppid() != parent:  # the runner died before the line above
                code = 0
            else:
                code = self._boot_child(instance_id, name, user_data, seen_running_at, fork_safe)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:
            logger.exception("%s (%s): the worker failed", name, instance_id)
        finally:
            flush_output()
            os._exit(code)

    def _boot_child(
        self,
        instance_id: str,
        name: str,
        user_data: str,
        seen_running_at: float,
        fork_safe: bool,
    ) -> int:
        try:
            environment = parse_user_data(user_data)
        except ValueError as error:
            logger.error("%s (%s): cannot boot: its user data: %s", name, instance_id, error)
            return EXIT_BAD_USER_DATA
        if not fork_safe or environment != self.environment:
            if fork_safe:
                differences = sorted(
                    key
                    for key in environment.keys() | self.environment.keys()
                    if environment.get(key) != self.environment.get(key)
                )
                logger.info(
                    "%s (%s): its configuration differs from the runner's (%s): "
                    "starting a fresh `manage.py runworker`",
                    name,
                    instance_id,
                    ", ".join(differences),
                )
            exec_runworker(instance_id, environment)

        import torch
        from celery.signals import worker_ready
        from django.db import connections

        from recognition.worker.process import run_worker

        # Never use the zygote's connections: their sockets are shared with it.
        aws.reset_clients()
        connections.close_all()
        os.environ.update(environment)
        os.environ["FACESITE_INSTANCE_ID"] = instance_id
        # The zygote ran Django's system checks when it started; Celery's Django fix-up would
        # run them again in every worker.
        os.environ["CELERY_SKIP_CHECKS"] = "1"
        threads = int(environment.get("FACESITE_ENGINE_THREADS") or 1)
        if threads > 0:  # 0 leaves torch's default, as the engine reads the setting
            torch.set_num_threads(threads)

        def report_consuming(**_: object) -> None:
            logger.info(
                "%s (%s): worker consuming, %.2f s after the runner saw the instance running",
                name,
                instance_id,
                time.time() - seen_running_at,
            )

        worker_ready.connect(report_consuming, weak=False)
        run_worker(instance_id)
        return 0


def exec_runworker(instance_id: str, environment: dict[str, str]) -> NoReturn:
    """Replace this process by a fresh `manage.py runworker` configured by `environment`."""
    manage = str(settings.BASE_DIR / "manage.py")
    env = {**os.environ, **environment, "FACESITE_INSTANCE_ID": instance_id}
    flush_output()
    argv = [sys.executable, manage, "runworker", "--instance-id", instance_id]
    os.execve(sys.executable, argv, env)


def os_thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def signal_process(pid: int, sig: int) -> None:
    # A child that already exited is collected by reap().
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def flush_output() -> None:
    """Flush buffered log output, so a fork doesn't duplicate it and an exit doesn't lose it."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
