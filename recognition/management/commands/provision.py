"""Create the buckets and queues facesite needs, idempotently, on the emulator or on real AWS."""

import json
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.management.base import BaseCommand

from facesite import aws


def ensure_bucket(name: str, versioned: bool = False) -> bool:
    """Create the bucket unless it exists; returns True when it was created."""
    s3 = aws.client("s3")
    created = False
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": name}
        if settings.AWS_REGION != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.AWS_REGION}
        s3.create_bucket(**kwargs)
        created = True
    if versioned:
        # Two uploads with the same file name keep the file name as key; each request names
        # its own version, so neither reads the other's image.
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return created


def ensure_queue(name: str, attributes: dict[str, str]) -> str:
    """Create the queue (or bring an existing one to these attributes); returns its URL."""
    sqs = aws.client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def provision() -> dict[str, str]:
    """Buckets and queues; returns what each name resolved to, for printing."""
    resources: dict[str, str] = {}
    for bucket, versioned in (
        (settings.INPUT_BUCKET, True),
        (settings.OUTPUT_BUCKET, False),
        (settings.GALLERY_BUCKET, False),
    ):
        created = ensure_bucket(bucket, versioned=versioned)
        resources[bucket] = "created" if created else "exists"

    dlq_url = ensure_queue(
        settings.REQUEST_DEAD_LETTER_QUEUE, {"MessageRetentionPeriod": str(14 * 24 * 3600)}
    )
    dlq_arn = aws.client("sqs").get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    resources[settings.REQUEST_DEAD_LETTER_QUEUE] = dlq_url
    resources[settings.REQUEST_QUEUE] = ensure_queue(
        settings.REQUEST_QUEUE,
        {
            "MaximumMessageSize": str(settings.REQUEST_MAX_MESSAGE_BYTES),
            "VisibilityTimeout": str(settings.REQUEST_VISIBILITY_TIMEOUT),
            # A message that keeps killing workers ends in the dead-letter queue, not in a loop.
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.REQUEST_MAX_RECEIVES}
            ),
        },
    )
    resources[settings.RESPONSE_QUEUE] = ensure_queue(
        settings.RESPONSE_QUEUE, {"VisibilityTimeout": "30"}
    )
    return resources


class Command(BaseCommand):
    help = "Create the S3 buckets and SQS queues (idempotent; emulator or real AWS)."

    def handle(self, *args: Any, **options: Any) -> None:
        target = settings.AWS_ENDPOINT_URL or f"AWS {settings.AWS_REGION}"
        self.stdout.write(f"Provisioning prefix '{settings.FACESITE_PREFIX}' on {target}")
        resources = provision()
        for name, state in resources.items():
            self.stdout.write(f"  {name}: {state}")
        configured = {
            settings.REQUEST_QUEUE: settings.REQUEST_QUEUE_URL,
            settings.RESPONSE_QUEUE: settings.RESPONSE_QUEUE_URL,
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
