"""``manage.py createapikey NAME [--scope recognize|manage] [--rate-limit N]``: a new API key,
printed once, alone on the last line (only its hash is stored)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apikeys.keys import create_key
from apikeys.models import ApiKey


class Command(BaseCommand):
    help = (
        "Create an API key for /api/v1/. The key is printed once, alone on the last line; only "
        "its hash is stored. 'recognize' may call recognize, detect and verify and read "
        "subjects; 'manage' may do everything."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who or what the key is for (shown in the admin)")
        parser.add_argument("--scope", choices=ApiKey.Scope.values, default=ApiKey.Scope.RECOGNIZE)
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="calls per minute for this key (default: FACESITE_API_RATE_LIMIT)",
        )

    def handle(self, *args, name: str, scope: str, rate_limit: int | None, **options) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise CommandError("--rate-limit must be at least 1")
        row, key = create_key(name, scope, rate_limit)
        self.stdout.write(
            f"API key {row.name!r} ({row.scope}, {row.prefix}…) created; it is shown only now:"
        )
        self.stdout.write(key)
