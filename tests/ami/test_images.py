"""Which AMI the scaler launches workers from."""

from datetime import UTC, datetime

import pytest

from ami.image.lookup import NoWorkerImage, current_image_id
from facesite import aws
from facesite.aws.names import BUILT_AT_TAG, Names, Role


def worker_image_tags(prefix: str) -> list[dict[str, str]]:
    return Names(prefix, "us-east-1", "123456789012").tags(Role.WORKER_IMAGE)


def register(name: str, tags: list[dict[str, str]]) -> str:
    ec2 = aws.client("ec2")
    tags = [*tags, {"Key": BUILT_AT_TAG, "Value": datetime.now(UTC).isoformat()}]
    image_id = ec2.register_image(Name=name, RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_tags(Resources=[image_id], Tags=tags)
    return image_id


def test_the_configured_ami_wins(mocked_aws, settings):
    register("tagged", worker_image_tags("amitest"))
    settings.FACESITE_AMI_ID = "ami-0123456789abcdef0"
    assert current_image_id() == "ami-0123456789abcdef0"


def test_the_newest_image_of_this_prefix(mocked_aws):
    # Built within the same second: EC2's CreationDate alone cannot order them.
    register("other-prefix", worker_image_tags("someoneelse"))
    register("untagged", [])
    first = register("first", worker_image_tags("amitest"))
    assert current_image_id() == first
    second = register("second", worker_image_tags("amitest"))
    assert current_image_id() == second


def test_no_image_says_what_to_run(mocked_aws):
    register("other-prefix", worker_image_tags("someoneelse"))
    with pytest.raises(NoWorkerImage, match="manage.py buildami"):
        current_image_id()
