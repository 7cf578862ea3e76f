"""`manage.py teardown [--dry-run] [--yes] [--delete-data]`: remove every resource tagged with
the prefix (see ami/deploy.py)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.deploy import find_tagged, teardown
from facesite import aws


class Command(BaseCommand):
    help = (
        "Remove every resource tagged with this prefix: instances (stopped ones too), Elastic "
        "IPs, AMIs and snapshots, security groups, roles and instance profiles, SSM parameters, "
        "queues; buckets only with --delete-data."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would go; remove nothing"
        )
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        parser.add_argument(
            "--delete-data",
            action="store_true",
            help="also empty and delete the buckets (uploads, results, gallery)",
        )
        parser.add_argument(
            "--poll", type=float, default=5.0, help="seconds between looks at EC2 (default 5)"
        )

    def handle(
        self, *args: Any, dry_run: bool, yes: bool, delete_data: bool, poll: float, **options: Any
    ) -> None:
        names = aws.names()
        found = find_tagged(names)
        if found.empty():
            self.stdout.write(f"Nothing tagged facesite:prefix={names.prefix}.")
            return
        self.stdout.write(f"Resources tagged facesite:prefix={names.prefix}:")
        for line in found.lines(delete_data):
            self.stdout.write(line)
        if dry_run:
            self.stdout.write("Dry run: nothing was removed.")
            return
        if not yes and input("Remove them? Type the prefix to confirm: ").strip() != names.prefix:
            raise CommandError("not confirmed: nothing was removed")
        teardown(
            names, found, delete_data, say=lambda line: self.stdout.write(f"  {line}"), poll=poll
        )
        self.stdout.write(self.style.SUCCESS("Torn down."))
