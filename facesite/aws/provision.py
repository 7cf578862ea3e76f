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


def ensure_bucket(name: str, region: str, versioned: bool = False, prefix: str = "") -> bool:
    """Create the bucket unless it exists; returns True when it was created. Tagged with
    `prefix` when given, so teardown finds it."""
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
    if prefix:
        s3.put_bucket_tagging(
            Bucket=name, Tagging={"TagSet": [{"Key": PREFIX_TAG, "Value": prefix}]}
        )
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


def ensure_queue(name: str, attributes: dict[str, str], prefix: str = "") -> str:
    """Create the queue (or bring an existing one to these attributes); returns its URL.
    Tagged with `prefix` when given, so teardown finds it."""
    sqs = client("sqs")
    tags = {PREFIX_TAG: prefix} if prefix else {}
    try:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError:
        return sqs.create_queue(QueueName=name, Attributes=attributes, tags=tags)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    if tags:
        sqs.tag_queue(QueueUrl=url, Tags=tags)
    return url


def expire_uploads(bucket: str, days: int) -> None:
    """Face images are personal data: uploads and their older versions (the bucket is
    versioned) are deleted `days` after they were stored, or replaced."""
    client("s3").put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "expire-uploads",
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "Expiration": {"Days": days},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": days},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                }
            ]
        },
    )


def provision_storage(
    names: Names, visibility_timeout: int, max_receives: int, retention_days: int = 7
) -> dict[str, str]:
    """Buckets and queues; returns what each name resolved to ("created", "exists", a URL)."""
    resources: dict[str, str] = {}
    for bucket, versioned in (
        (names.input_bucket, True),
        (names.output_bucket, False),
        (names.gallery_bucket, False),
    ):
        created = ensure_bucket(bucket, names.region, versioned=versioned, prefix=names.prefix)
        resources[bucket] = "created" if created else "exists"
    expire_uploads(names.input_bucket, retention_days)

    dlq = names.request_dead_letter_queue
    dlq_url = ensure_queue(
        dlq, {"MessageRetentionPeriod": str(14 * 24 * 3600)}, prefix=names.prefix
    )
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
        prefix=names.prefix,
    )
    resources[names.response_queue] = ensure_queue(
        names.response_queue, {"VisibilityTimeout": "30"}, prefix=names.prefix
    )
    return resources


# --- IAM and the security group ------------------------------------------------------------------


def ensure_worker_security_group(names: Names) -> str:
    """The workers' security group in the default VPC, without inbound rules; returns its id.

    Workers only call out (SQS, S3); the default outbound rule is kept."""
    return ensure_security_group(
        names,
        names.worker_security_group,
        f"facesite workers of prefix {names.prefix}: no inbound traffic",
        inbound_tcp_ports=(),
    )


def ensure_web_security_group(names: Names) -> str:
    """web-instance's security group: HTTP and HTTPS in from anywhere, nothing else."""
    return ensure_security_group(
        names,
        names.web_security_group,
        f"facesite web tier of prefix {names.prefix}: HTTP and HTTPS in",
        inbound_tcp_ports=(80, 443),
    )


def ensure_security_group(
    names: Names, group_name: str, description: str, inbound_tcp_ports: tuple[int, ...]
) -> str:
    """A security group in the default VPC whose inbound rules are exactly TCP
    `inbound_tcp_ports` from anywhere (any other rule is revoked); returns its id."""
    ec2 = client("ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise ProvisionError(f"no default VPC in {names.region} to put {group_name} in")
    vpc = vpcs[0]["VpcId"]
    groups = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [group_name]},
            {"Name": "vpc-id", "Values": [vpc]},
        ]
    )["SecurityGroups"]
    wanted = [
        {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        }
        for port in inbound_tcp_ports
    ]
    if not groups:
        group_id = ec2.create_security_group(
            GroupName=group_name,
            Description=description,
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": PREFIX_TAG, "Value": names.prefix}],
                }
            ],
        )["GroupId"]
        existing: list[dict[str, Any]] = []
    else:
        group_id, existing = groups[0]["GroupId"], groups[0]["IpPermissions"]
    have = {_rule_key(rule) for rule in existing}
    extra = [rule for rule in existing if _rule_key(rule) not in {_rule_key(w) for w in wanted}]
    if extra:
        ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=extra)
    missing = [rule for rule in wanted if _rule_key(rule) not in have]
    if missing:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=missing)
    return group_id


def _rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    ranges = tuple(sorted(r["CidrIp"] for r in rule.get("IpRanges", [])))
    others = (rule.get("Ipv6Ranges"), rule.get("UserIdGroupPairs"), rule.get("PrefixListIds"))
    return (
        rule.get("IpProtocol"),
        rule.get("FromPort"),
        rule.get("ToPort"),
        ranges,
        tuple(bool(o) for o in others),
    )
