"""`manage.py deploy [--dry-run]`: everything on an account (see ami/deploy.py)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.deploy import DeployError, deploy, deploy_plan, deployment_names
from facesite import aws


class Command(BaseCommand):
    help = (
        "Create or update the whole service (buckets, queues, roles, security groups, worker "
        "AMI, secrets, Elastic IP, web-instance) and print its URL. Idempotent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="print the plan; call no AWS API"
        )
        parser.add_argument(
            "--poll", type=float, default=5.0, help="seconds between looks at EC2 (default 5)"
        )

    def handle(self, *args: Any, dry_run: bool, poll: float, **options: Any) -> None:
        names = aws.names() if dry_run else deployment_names()
        for line in deploy_plan(names):
            self.stdout.write(line)
        if dry_run:
            self.stdout.write("Dry run: nothing was created.")
            return
        try:
            result = deploy(names, say=lambda line: self.stdout.write(f"  {line}"), poll=poll)
        except DeployError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            self.style.SUCCESS(
                f"Deployed. facesite is at {result.url} once web-instance has installed "
                "itself (about 10 minutes on a first boot). The admin password is the SSM "
                f"SecureString /{names.prefix}/admin-password."
            )
        )
