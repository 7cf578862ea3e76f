"""Creating this deployment's AWS resources, idempotently, on the emulator or on AWS: buckets,
queues (with the request queue's dead-letter queue) and security groups. The IAM roles are in
facesite/aws/iam.py. `manage.py provision`, `buildami` and `deploy` call these.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from facesite.aws.clients import client
from facesite.aws.names import PREFIX_TAG, REQUEST_MAX_MESSAGE_BYTES, Names


class ProvisionError(Exception):
    """A resource cannot be created where it should be; the message says why."""


# --- S3 and SQS -----------------------------------------------------------------------------------


def ensure_bucket(name: str, region: str, versioned: bool = False) -> bool:
    """Create the bucket unless it exists; returns True when it was created."""
    s3 = client("s3")
    created = False
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        kwargs: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
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
    sqs = client("sqs")
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def provision_storage(names: Names, visibility_timeout: int, max_receives: int) -> dict[str, str]:
    """Buckets and queues; returns what each name resolved to ("created", "exists", a URL)."""
    resources: dict[str, str] = {}
    for bucket, versioned in (
        (names.input_bucket, True),
        (names.output_bucket, False),
        (names.gallery_bucket, False),
    ):
        created = ensure_bucket(bucket, names.region, versioned=versioned)
        resources[bucket] = "created" if created else "exists"

    dlq = names.request_dead_letter_queue
    dlq_url = ensure_queue(dlq, {"MessageRetentionPeriod": str(14 * 24 * 3600)})
    dlq_arn = client("sqs").get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    resources[dlq] = dlq_url
    resources[names.request_queue] = ensure_queue(
        names.request_queue,
        {
            "MaximumMessageSize": str(REQUEST_MAX_MESSAGE_BYTES),
            "VisibilityTimeout": str(visibility_timeout),
            # A message that keeps killing workers ends in the dead-letter queue, not in a loop.
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}
            ),
        },
    )
    resources[names.response_queue] = ensure_queue(
        names.response_queue, {"VisibilityTimeout": "30"}
    )
    return resources


# --- IAM and the security group ------------------------------------------------------------------


def ensure_worker_security_group(names: Names) -> str:
    """The workers' security group in the default VPC, without inbound rules; returns its id.

    Workers only call out (SQS, S3, EC2); the default outbound rule is kept."""
    ec2 = client("ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ProvisionError(f"no default VPC in {names.region} to put the security group in")
    vpc = vpcs[0]["VpcId"]
    group_name = names.worker_security_group
    groups = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [group_name]},
            {"Name": "vpc-id", "Values": [vpc]},
        ]
    )["SecurityGroups"]
    if not groups:
        return ec2.create_security_group(
            GroupName=group_name,
            Description=f"facesite workers of prefix {names.prefix}: no inbound traffic",
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": PREFIX_TAG, "Value": names.prefix}],
                }
            ],
        )["GroupId"]
    group = groups[0]
    if group["IpPermissions"]:
        ec2.revoke_security_group_ingress(
            GroupId=group["GroupId"], IpPermissions=group["IpPermissions"]
        )
    return group["GroupId"]
