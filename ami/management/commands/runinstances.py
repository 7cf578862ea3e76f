"""`manage.py runinstances`: the local instance runner (see ami/local/runner.py)."""

import os
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.image.bootscript import SINGLE_THREAD_ENVIRONMENT
from ami.local.runner import DEFAULT_INTERVAL, DEFAULT_STOP_GRACE, InstanceRunner


class Command(BaseCommand):
    help = (
        "Play the emulator's EC2 instances: run a worker for every running app-tier instance "
        "of this prefix (its user data is the boot script), stop it when the instance stops."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=DEFAULT_INTERVAL,
            help=f"seconds between two reads of EC2 (default {DEFAULT_INTERVAL})",
        )
        parser.add_argument(
            "--stop-grace",
            type=float,
            default=DEFAULT_STOP_GRACE,
            help="seconds a stopping worker has to finish its task before SIGKILL "
            f"(default {DEFAULT_STOP_GRACE:.0f})",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        # The zygote must stay single-threaded: thread pools read these when their library
        # loads, which Django's start-up may already have done, so start again with them set.
        # (Each worker then sets torch's thread count from its own boot script.)
        pinned = {**SINGLE_THREAD_ENVIRONMENT, "FACESITE_ENGINE_THREADS": "1"}
        if any(os.environ.get(name) != value for name, value in pinned.items()):
            os.execve(sys.executable, sys.orig_argv, {**os.environ, **pinned})
        super().run_from_argv(argv)

    def handle(self, *args: Any, interval: float, stop_grace: float, **options: Any) -> None:
        if not settings.AWS_ENDPOINT_URL:
            raise CommandError(
                "runinstances plays instances for the local emulator; on AWS, real instances "
                "run the workers (FACESITE_AWS_ENDPOINT is empty)"
            )
        runner = InstanceRunner(interval=interval, stop_grace=stop_grace)
        runner.prepare()
        runner.run()
