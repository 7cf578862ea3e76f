"""Creating this deployment's AWS resources, idempotently, on the emulator or on AWS: buckets,
queues (with the request queue's dead-letter queue), the workers' IAM role and instance profile,
and their security group. `manage.py provision` and `manage.py buildami` call these.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from facesite.aws.clients import client
from facesite.aws.names import PREFIX_TAG, REQUEST_MAX_MESSAGE_BYTES, ROLE_TAG, Names, Role


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

EC2_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def worker_policy(names: Names) -> dict[str, Any]:
    """What a worker may do, and nothing else."""

    def objects(bucket: str) -> str:
        return f"arn:aws:s3:::{bucket}/*"

    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadUploads",
                "Effect": "Allow",
                # Uploads are read by version: the input bucket is versioned.
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": objects(names.input_bucket),
            },
            {
                "Sid": "WriteResults",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": objects(names.output_bucket),
            },
            {
                "Sid": "ReadGallery",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": objects(names.gallery_bucket),
            },
            {
                "Sid": "TakeRequests",
                "Effect": "Allow",
                "Action": [
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:GetQueueAttributes",
                ],
                "Resource": names.queue_arn(names.request_queue),
            },
            {
                "Sid": "SendResults",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": names.queue_arn(names.response_queue),
            },
            {
                "Sid": "StopIdleWorkers",
                "Effect": "Allow",
                "Action": ["ec2:StopInstances"],
                "Resource": f"arn:aws:ec2:{names.region}:{names.account}:instance/*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{PREFIX_TAG}": names.prefix,
                        f"aws:ResourceTag/{ROLE_TAG}": str(Role.APP_TIER),
                    }
                },
            },
        ],
    }


def ensure_worker_role(names: Names) -> str:
    """The workers' role and instance profile, created or brought up to date; returns its ARN."""
    iam = client("iam")
    profile_name = names.worker_profile
    try:
        iam.get_role(RoleName=profile_name)
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        iam.create_role(
            RoleName=profile_name,
            AssumeRolePolicyDocument=json.dumps(EC2_TRUST_POLICY),
            Description=f"facesite workers of prefix {names.prefix}",
            Tags=[{"Key": PREFIX_TAG, "Value": names.prefix}],
        )
    # Written every time: a rebuilt image also brings the policy up to date.
    iam.put_role_policy(
        RoleName=profile_name,
        PolicyName="facesite-worker",
        PolicyDocument=json.dumps(worker_policy(names)),
    )
    try:
        profile = iam.get_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        profile = iam.create_instance_profile(InstanceProfileName=profile_name)["InstanceProfile"]
    if profile_name not in {role["RoleName"] for role in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=profile_name, RoleName=profile_name)
    return profile["Arn"]


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
