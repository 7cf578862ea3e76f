"""The IAM roles facesite's machines run with, each allowed exactly what its code calls.

- worker (`<prefix>-worker`, instance profile of every app-tier instance and of the AMI
  builder): read uploads and the gallery, write results; take requests, send responses. No EC2
  permission at all: an idle worker stops its instance by powering the OS off, and instances are
  launched with `InstanceInitiatedShutdownBehavior=stop`, so powering off *is* stopping (locally
  the instance runner plays the machine and stops it through EC2 instead).
- web (`<prefix>-web`, instance profile of `web-instance`): store uploads, send requests,
  consume responses and dead letters, read and write gallery snapshots; and assume the scaler
  role, nothing else.
- scaler (`<prefix>-scaler`, assumed by the scaler process on `web-instance` through an AWS
  config profile with `credential_source = Ec2InstanceMetadata`): read the queues' depths;
  describe EC2 (read-only, the only `*` resources); launch instances only tagged with this
  prefix and only from this prefix's images; tag only at launch; start, stop and terminate only
  instances tagged with this prefix as app tier; pass only the worker role, only to EC2.

No statement has a `*` action, and `*` resources appear only on read-only describes (EC2 has no
resource-level permissions for them). `ensure_roles` creates or updates all three, on the
emulator (`make run`) as on AWS.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from facesite.aws.clients import client
from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Names, Role

POLICY_NAME = {"worker": "facesite-worker", "web": "facesite-web", "scaler": "facesite-scaler"}


def _statement(sid: str, actions: list[str], resources: list[str] | str, **condition: Any) -> dict:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": resources,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _objects(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}/*"


def ec2_trust_policy() -> dict[str, Any]:
    return _policy(
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    )


def role_arn(names: Names, role: str) -> str:
    return f"arn:aws:iam::{names.account}:role/{role}"


def worker_policy(names: Names) -> dict[str, Any]:
    """What a worker may do, and nothing else."""
    return _policy(
        # Uploads are read by version: the input bucket is versioned.
        _statement(
            "ReadUploads", ["s3:GetObject", "s3:GetObjectVersion"], _objects(names.input_bucket)
        ),
        _statement("WriteResults", ["s3:PutObject"], _objects(names.output_bucket)),
        _statement("ReadGallery", ["s3:GetObject"], _objects(names.gallery_bucket)),
        _statement(
            "TakeRequests",
            [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            names.queue_arn(names.request_queue),
        ),
        _statement("SendResults", ["sqs:SendMessage"], names.queue_arn(names.response_queue)),
    )


def web_policy(names: Names) -> dict[str, Any]:
    """What the web tier (gunicorn, the response and dead-letter consumers, `manage.py enroll`
    and `migrate` on web-instance) may do."""
    queues = [
        names.queue_arn(q)
        for q in (names.request_queue, names.response_queue, names.request_dead_letter_queue)
    ]
    return _policy(
        _statement("StoreUploads", ["s3:PutObject"], _objects(names.input_bucket)),
        # /healthz checks the input bucket is there.
        _statement("CheckUploadBucket", ["s3:ListBucket"], f"arn:aws:s3:::{names.input_bucket}"),
        _statement(
            "GallerySnapshots",
            ["s3:GetObject", "s3:PutObject"],
            _objects(names.gallery_bucket),
        ),
        _statement("SendRequests", ["sqs:SendMessage"], names.queue_arn(names.request_queue)),
        _statement(
            "ConsumeResponsesAndDeadLetters",
            ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
            [
                names.queue_arn(names.response_queue),
                names.queue_arn(names.request_dead_letter_queue),
            ],
        ),
        _statement("QueueDepths", ["sqs:GetQueueAttributes"], queues),
        _statement("BecomeTheScaler", ["sts:AssumeRole"], role_arn(names, names.scaler_role)),
    )


def scaler_policy(names: Names) -> dict[str, Any]:
    """What the scaler may do: the app tier's instances of this prefix, and nothing else."""
    region, account = names.region, names.account
    instances = f"arn:aws:ec2:{region}:{account}:instance/*"
    volumes = f"arn:aws:ec2:{region}:{account}:volume/*"
    ours = {f"aws:ResourceTag/{PREFIX_TAG}": names.prefix}
    return _policy(
        # The request queue's depth drives it; all three queues' are recorded for /metrics.
        _statement(
            "QueueDepths",
            ["sqs:GetQueueAttributes"],
            [
                names.queue_arn(q)
                for q in (
                    names.request_queue,
                    names.response_queue,
                    names.request_dead_letter_queue,
                )
            ],
        ),
        # Describe calls have no resource-level permissions in EC2: "*" is the only resource.
        _statement(
            "ReadOnlyDescribe",
            [
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceStatus",
                "ec2:DescribeImages",
                "ec2:DescribeInstanceAttribute",
            ],
            "*",
        ),
        # RunInstances is authorised against every resource it touches: the new instance and
        # volume must carry this prefix's app-tier tags at launch...
        _statement(
            "LaunchTaggedAppTier",
            ["ec2:RunInstances"],
            [instances, volumes],
            StringEquals={
                f"aws:RequestTag/{PREFIX_TAG}": names.prefix,
                f"aws:RequestTag/{ROLE_TAG}": str(Role.APP_TIER),
            },
        ),
        # ...the image must be this prefix's worker image...
        _statement(
            "LaunchFromOurImages",
            ["ec2:RunInstances"],
            f"arn:aws:ec2:{region}::image/*",
            StringEquals={
                f"ec2:ResourceTag/{PREFIX_TAG}": names.prefix,
                f"ec2:ResourceTag/{ROLE_TAG}": str(Role.WORKER_IMAGE),
            },
        ),
        # ...in the account's own network (subnet, interface, the worker security group).
        _statement(
            "LaunchIntoOurNetwork",
            ["ec2:RunInstances"],
            [
                f"arn:aws:ec2:{region}:{account}:subnet/*",
                f"arn:aws:ec2:{region}:{account}:network-interface/*",
                f"arn:aws:ec2:{region}:{account}:security-group/*",
                f"arn:aws:ec2:{region}:{account}:key-pair/*",
            ],
        ),
        # Tags only as part of the launch (TagSpecifications), never on existing resources.
        _statement(
            "TagAtLaunchOnly",
            ["ec2:CreateTags"],
            [instances, volumes],
            StringEquals={"ec2:CreateAction": "RunInstances"},
        ),
        _statement(
            "ManageOurAppTier",
            ["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"],
            instances,
            StringEquals={**ours, f"aws:ResourceTag/{ROLE_TAG}": str(Role.APP_TIER)},
        ),
        _statement(
            "PassTheWorkerRole",
            ["iam:PassRole"],
            role_arn(names, names.worker_profile),
            StringEquals={"iam:PassedToService": "ec2.amazonaws.com"},
        ),
    )


def scaler_trust_policy(names: Names) -> dict[str, Any]:
    """Only the web role (the scaler's host) may assume the scaler role."""
    return _policy(
        {
            "Effect": "Allow",
            "Principal": {"AWS": role_arn(names, names.web_role)},
            "Action": "sts:AssumeRole",
        }
    )


def _ensure_role(
    names: Names,
    role: str,
    trust: dict[str, Any],
    policy_name: str,
    policy: dict[str, Any],
    with_profile: bool,
) -> str:
    """Create or update `role` (trust and inline policy) and, if asked, its instance profile of
    the same name; returns the profile's ARN (or the role's, without a profile)."""
    iam = client("iam")
    tags = [{"Key": PREFIX_TAG, "Value": names.prefix}]
    try:
        role_arn_found = iam.get_role(RoleName=role)["Role"]["Arn"]
        iam.update_assume_role_policy(RoleName=role, PolicyDocument=json.dumps(trust))
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        role_arn_found = iam.create_role(
            RoleName=role,
            AssumeRolePolicyDocument=json.dumps(trust),
            Description=f"facesite {policy_name} of prefix {names.prefix}",
            Tags=tags,
        )["Role"]["Arn"]
    # Written every time: a new version of facesite brings its policies up to date.
    iam.put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps(policy))
    if not with_profile:
        return role_arn_found
    try:
        profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        profile = iam.create_instance_profile(InstanceProfileName=role, Tags=tags)[
            "InstanceProfile"
        ]
    if role not in {r["RoleName"] for r in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)
    return profile["Arn"]


def ensure_worker_role(names: Names) -> str:
    """The workers' role and instance profile; returns the profile's ARN."""
    return _ensure_role(
        names,
        names.worker_profile,
        ec2_trust_policy(),
        POLICY_NAME["worker"],
        worker_policy(names),
        with_profile=True,
    )


def ensure_roles(names: Names) -> dict[str, str]:
    """All three roles (the web role first: the scaler role's trust names it); returns
    role name -> ARN of its instance profile (worker, web) or role (scaler)."""
    return {
        names.worker_profile: ensure_worker_role(names),
        names.web_role: _ensure_role(
            names,
            names.web_role,
            ec2_trust_policy(),
            POLICY_NAME["web"],
            web_policy(names),
            with_profile=True,
        ),
        names.scaler_role: _ensure_role(
            names,
            names.scaler_role,
            scaler_trust_policy(names),
            POLICY_NAME["scaler"],
            scaler_policy(names),
            with_profile=False,
        ),
    }


def roles(names: Names) -> list[str]:
    return [names.worker_profile, names.web_role, names.scaler_role]
