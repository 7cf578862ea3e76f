"""Run an app-tier Celery worker in the foreground (what an instance's boot script starts)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from recognition.worker.process import run_worker


class Command(BaseCommand):
    help = "Run one app-tier worker: one task at a time; stops its instance when idle."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--instance-id",
            default="",
            help="EC2 instance id to stop when idle (default: FACESITE_INSTANCE_ID or metadata)",
        )

    def handle(self, *args: Any, instance_id: str, **options: Any) -> None:
        run_worker(instance_id)
