"""`manage.py provision`: create the buckets and queues, idempotently, on the emulator or AWS."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from facesite import aws
from facesite.aws.iam import ensure_roles
from facesite.aws.provision import provision_storage


class Command(BaseCommand):
    help = (
        "Create the S3 buckets, SQS queues and the IAM roles of the worker, web tier and scaler "
        "(idempotent; emulator or real AWS)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        names = aws.names()
        target = settings.AWS_ENDPOINT_URL or f"AWS {settings.AWS_REGION}"
        self.stdout.write(f"Provisioning prefix '{names.prefix}' on {target}")
        resources = provision_storage(
            names,
            settings.FACESITE_VISIBILITY_TIMEOUT,
            settings.FACESITE_MAX_RECEIVES,
            settings.FACESITE_INPUT_RETENTION_DAYS,
        )
        for name, state in resources.items():
            self.stdout.write(f"  {name}: {state}")
        for role, arn in ensure_roles(names).items():
            self.stdout.write(f"  IAM role {role}: {arn}")
        configured = {
            names.request_queue: names.request_queue_url,
            names.response_queue: names.response_queue_url,
        }
        if any(resources[name] != url for name, url in configured.items()):
            account = aws.client("sts").get_caller_identity()["Account"]
            self.stdout.write(
                self.style.WARNING(
                    "The queue URLs differ from the configured ones: "
                    f"set FACESITE_AWS_ACCOUNT_ID={account}"
                )
            )
        self.stdout.write(self.style.SUCCESS("Provisioned."))
