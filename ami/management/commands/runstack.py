"""`manage.py runstack` (what `make run` runs): the whole local stack in the foreground."""

import os
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.stack import LocalStack


class Command(BaseCommand):
    help = (
        "Start the local stack: AWS emulator, database, buckets and queues, worker image, "
        "web tier, scaler and instance runner; Ctrl-C stops everything it started."
    )

    # Every process the stack starts runs Django's checks itself; here they would only load the
    # face engine (through the URL checks) into a supervisor that never uses it.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--port", type=int, default=8000, help="web tier port on 127.0.0.1 (default 8000)"
        )
        parser.add_argument(
            "--gallery",
            type=Path,
            default=os.environ.get("FACESITE_GALLERY_DIR") or None,
            help="enroll this folder (one sub-folder per identity) before starting "
            "(default: FACESITE_GALLERY_DIR)",
        )

    def handle(self, *args: Any, port: int, gallery: Path | None, **options: Any) -> None:
        if gallery is not None and not gallery.is_dir():
            raise CommandError(f"--gallery {gallery}: not a folder")
        sys.exit(LocalStack(port, gallery, self.stdout).run())
