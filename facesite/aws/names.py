"""facesite's AWS vocabulary: every name derived from the prefix, the tags that mark what is
ours, the app tier's instance names and EC2's instance states.

Pure (no boto3, no Django): the scaler's policy, the settings and the tests use it as it is.
Everything derives from one `Names`, so a deployment under another prefix, region or account
changes one value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Tags on every resource facesite creates: which deployment, and what it is for.
PREFIX_TAG = "facesite:prefix"
ROLE_TAG = "facesite:role"
# On app-tier instances: the run_instances ClientToken, so a retried launch finds its instance.
LAUNCH_TOKEN_TAG = "facesite:launch-token"
# On app-tier instances: the image they were launched from and a digest of their user data
# (their configuration), so stopped instances of an older build are replaced (scaler/fleet.py).
IMAGE_TAG = "facesite:image"
CONFIG_TAG = "facesite:config"
# On worker images: when the build finished (orders two images created in the same second).
BUILT_AT_TAG = "facesite:built-at"

# The request queue's message limit (the course's contract): images travel through S3.
REQUEST_MAX_MESSAGE_BYTES = 1024


class Role(StrEnum):
    """The value of ROLE_TAG."""

    APP_TIER = "app-tier"
    WEB = "web"
    AMI_BUILDER = "ami-builder"
    WORKER_IMAGE = "worker-image"


class State(StrEnum):
    """EC2 instance states, spelled as EC2 spells them."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"


APP_TIER_NAME_PREFIX = "app-tier-instance-"
WEB_INSTANCE_NAME = "web-instance"
_APP_TIER_NAME = re.compile(rf"^{re.escape(APP_TIER_NAME_PREFIX)}([1-9][0-9]*)$")


def app_tier_name(number: int) -> str:
    """`app-tier-instance-<number>`: the Name tag of an app-tier instance."""
    return f"{APP_TIER_NAME_PREFIX}{number}"


def app_tier_number(name: str) -> int | None:
    """The n of `app-tier-instance-<n>`, or None for any other name."""
    match = _APP_TIER_NAME.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Names:
    """The names of one deployment's resources."""

    prefix: str
    region: str
    account: str
    # Queue URLs start here: the emulator's endpoint, or SQS's regional one on AWS.
    sqs_endpoint: str = ""
    instance_profile_override: str = ""
    # Bucket names are global across AWS accounts: on AWS they end with this (the account id).
    bucket_suffix: str = ""

    def _bucket(self, kind: str) -> str:
        base = f"{self.prefix}-{kind}-bucket"
        return f"{base}-{self.bucket_suffix}" if self.bucket_suffix else base

    @property
    def input_bucket(self) -> str:
        return self._bucket("in")

    @property
    def output_bucket(self) -> str:
        return self._bucket("out")

    @property
    def gallery_bucket(self) -> str:
        """Gallery snapshots for the workers, kept apart so in/out hold only requests."""
        return self._bucket("gallery")

    @property
    def request_queue(self) -> str:
        return f"{self.prefix}-req-queue"

    @property
    def request_dead_letter_queue(self) -> str:
        return f"{self.prefix}-req-dlq"

    @property
    def response_queue(self) -> str:
        return f"{self.prefix}-resp-queue"

    @property
    def worker_profile(self) -> str:
        """The workers' IAM role and instance profile (one name for both)."""
        return self.instance_profile_override or f"{self.prefix}-worker"

    @property
    def worker_security_group(self) -> str:
        return f"{self.prefix}-worker-sg"

    @property
    def web_role(self) -> str:
        """The web tier's IAM role and instance profile (web-instance runs with it)."""
        return f"{self.prefix}-web"

    @property
    def scaler_role(self) -> str:
        """The scaler's IAM role, assumed from the web role on web-instance."""
        return f"{self.prefix}-scaler"

    @property
    def web_security_group(self) -> str:
        return f"{self.prefix}-web-sg"

    def image_name(self, stamp: str) -> str:
        return f"{self.prefix}-worker-{stamp}"

    @property
    def builder_name(self) -> str:
        return f"{self.prefix}-ami-builder"

    def queue_url(self, queue: str) -> str:
        base = self.sqs_endpoint.rstrip("/") or f"https://sqs.{self.region}.amazonaws.com"
        return f"{base}/{self.account}/{queue}"

    @property
    def request_queue_url(self) -> str:
        return self.queue_url(self.request_queue)

    @property
    def request_dead_letter_queue_url(self) -> str:
        return self.queue_url(self.request_dead_letter_queue)

    @property
    def response_queue_url(self) -> str:
        return self.queue_url(self.response_queue)

    def queue_arn(self, queue: str) -> str:
        return f"arn:aws:sqs:{self.region}:{self.account}:{queue}"

    def tags(self, role: Role, name: str = "") -> list[dict[str, str]]:
        """The tags that mark a resource as this deployment's, in EC2's Key/Value form."""
        tags = [{"Key": PREFIX_TAG, "Value": self.prefix}, {"Key": ROLE_TAG, "Value": role}]
        return ([{"Key": "Name", "Value": name}] if name else []) + tags

    def tag_filters(self, role: Role) -> list[dict[str, object]]:
        """DescribeInstances/DescribeImages filters for this deployment's resources of `role`."""
        return [
            {"Name": f"tag:{PREFIX_TAG}", "Values": [self.prefix]},
            {"Name": f"tag:{ROLE_TAG}", "Values": [str(role)]},
        ]
