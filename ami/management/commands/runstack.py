"""`manage.py runstack` (what `make run` runs): the whole local stack in the foreground."""

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.local.stack import LocalStack


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
            default=settings.FACESITE_GALLERY_DIR,
            help="enroll this folder (one sub-folder per identity) before starting "
            "(default: FACESITE_GALLERY_DIR)",
        )
        parser.add_argument(
            "--gallery-labels",
            type=Path,
            default=settings.FACESITE_GALLERY_LABELS,
            help="the gallery is a flat folder labelled by this 'Image,Results' CSV, as the "
            "course's (default: FACESITE_GALLERY_LABELS)",
        )

    def handle(
        self,
        *args: Any,
        port: int,
        gallery: Path | None,
        gallery_labels: Path | None,
        **options: Any,
    ) -> None:
        if gallery is not None and not gallery.is_dir():
            raise CommandError(f"--gallery {gallery}: not a folder")
        if gallery_labels is not None and not gallery_labels.is_file():
            raise CommandError(f"--gallery-labels {gallery_labels}: no such file")
        sys.exit(LocalStack(port, gallery, self.stdout, gallery_labels).run())
