"""Which AMI app-tier instances launch from: the one configured, else this project's newest."""

from typing import Any

from django.conf import settings

from facesite import aws
from scaler.fleet import PREFIX_TAG, ROLE_TAG

WORKER_IMAGE_ROLE = "worker-image"
# EC2's CreationDate has whole seconds; buildami also records the build time to the microsecond
# (UTC, ISO 8601, so it sorts as text) to order images built within one second.
BUILT_AT_TAG = "facesite:built-at"


class NoWorkerImage(LookupError):
    """No AMI to launch workers from."""


def worker_image_tags(prefix: str) -> list[dict[str, str]]:
    """The tags that mark an AMI as this deployment's worker image."""
    return [
        {"Key": PREFIX_TAG, "Value": prefix},
        {"Key": ROLE_TAG, "Value": WORKER_IMAGE_ROLE},
    ]


def worker_images() -> list[dict[str, Any]]:
    """This deployment's available worker images, newest first."""
    filters = [
        {"Name": f"tag:{tag['Key']}", "Values": [tag["Value"]]}
        for tag in worker_image_tags(settings.FACESITE_PREFIX)
    ]
    filters.append({"Name": "state", "Values": ["available"]})
    images = aws.client("ec2").describe_images(Owners=["self"], Filters=filters)["Images"]
    return sorted(images, key=_build_order, reverse=True)


def _build_order(image: dict[str, Any]) -> tuple[str, str, str]:
    tags = {tag["Key"]: tag["Value"] for tag in image.get("Tags", [])}
    return image["CreationDate"], tags.get(BUILT_AT_TAG, ""), image["ImageId"]


def current_image_id() -> str:
    """FACESITE_AMI_ID when set, else the newest available worker image of this prefix."""
    if settings.FACESITE_AMI_ID:
        return settings.FACESITE_AMI_ID
    images = worker_images()
    if not images:
        raise NoWorkerImage(
            f"no available worker image tagged {PREFIX_TAG}={settings.FACESITE_PREFIX} in "
            f"{settings.AWS_REGION}: run `manage.py buildami` (or set FACESITE_AMI_ID)"
        )
    return images[0]["ImageId"]
