"""Which AMI app-tier instances launch from: the one configured, else this project's newest."""

from typing import Any

from django.conf import settings

from facesite import aws
from facesite.aws.names import BUILT_AT_TAG, PREFIX_TAG, Role


class NoWorkerImage(LookupError):
    """No AMI to launch workers from."""


def worker_images() -> list[dict[str, Any]]:
    """This deployment's available worker images, newest first."""
    filters = [
        *aws.names().tag_filters(Role.WORKER_IMAGE),
        {"Name": "state", "Values": ["available"]},
    ]
    images = aws.client("ec2").describe_images(Owners=["self"], Filters=filters)["Images"]
    return sorted(images, key=_build_order, reverse=True)


def _build_order(image: dict[str, Any]) -> tuple[str, str, str]:
    # EC2's CreationDate has whole seconds; buildami also records the build time to the
    # microsecond (UTC, ISO 8601, so it sorts as text) to order images built within one second.
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
