"""`manage.py buildami`: build the worker image (see ami/image/build.py for what it does)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ami.image.build import BuildError, build, plan_build


class Command(BaseCommand):
    help = (
        "Build the app-tier worker image and the IAM role, instance profile and security group "
        "its instances run with (idempotent). On the local emulator: registers a tagged image."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="print the plan; call no AWS API"
        )
        parser.add_argument(
            "--base-ami",
            default="",
            help="AMI to install onto (default: the latest Amazon Linux 2023, from SSM)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=40,
            help="minutes the builder instance may take to install (default 40)",
        )
        parser.add_argument(
            "--commit",
            default="HEAD",
            help="the commit to install (git archive of it; default HEAD: uncommitted changes "
            "are not shipped)",
        )

    def handle(
        self,
        *args: Any,
        dry_run: bool,
        base_ami: str,
        timeout: float,
        commit: str,
        **options: Any,
    ) -> None:
        plan = plan_build(base_ami=base_ami, timeout=timeout * 60, commit=commit)
        for line in plan.describe():
            self.stdout.write(line)
        if dry_run:
            self.stdout.write("Dry run: nothing was created.")
            return
        try:
            result = build(plan, say=lambda line: self.stdout.write(f"  {line}"))
        except BuildError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            self.style.SUCCESS(
                f"Worker image {result.image_id} is this prefix's newest: the scaler launches "
                "from it (or pin it with FACESITE_AMI_ID)."
            )
        )
        if not plan.local:
            self.stdout.write(
                f"Launch workers with FACESITE_INSTANCE_PROFILE={plan.profile} "
                f"FACESITE_SECURITY_GROUP={result.security_group_id}"
            )
