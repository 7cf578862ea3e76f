"""`manage.py buildami`: the plan, the local image, and the AWS build flow against moto."""

import base64
import dataclasses
import json
import subprocess
import threading
import time
from io import StringIO

import boto3
import pytest
from django.core.management import call_command

from ami.image.build import (
    SOURCE_KEY_PREFIX,
    build,
    builder_user_data,
    plan_build,
    source_tree,
    worker_unit,
)
from ami.image.lookup import current_image_id
from facesite import aws
from facesite.aws.iam import worker_policy
from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Names, Role
from tests.ami.conftest import use_prefix

BUILDER_ROLE = str(Role.AMI_BUILDER)


def run_buildami(*args: str) -> str:
    out = StringIO()
    call_command("buildami", *args, stdout=out)
    return out.getvalue()


def tags_of(resource: dict) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in resource.get("Tags", [])}


def test_dry_run_calls_no_aws_api(settings):
    # Nothing listens on port 9: any call would fail the command.
    settings.AWS_ENDPOINT_URL = "http://127.0.0.1:9"
    aws.reset_clients()
    output = run_buildami("--dry-run")
    assert "register image" in output
    assert "Dry run: nothing was created." in output
    aws.reset_clients()


def test_dry_run_on_aws_prints_the_plan_and_creates_nothing(mocked_aws):
    output = run_buildami("--dry-run", "--base-ami", "ami-0abcdef1234567890")
    assert "launch a t3.medium builder from ami-0abcdef1234567890" in output
    assert "IAM role and instance profile 'amitest-worker'" in output
    assert aws.client("iam").list_roles()["Roles"] == []
    assert aws.client("ec2").describe_images(Owners=["self"])["Images"] == []
    assert aws.client("ec2").describe_instances()["Reservations"] == []
    assert aws.client("s3").list_buckets()["Buckets"] == []


@pytest.mark.e2e
def test_local_build_registers_the_image_the_scaler_launches(moto_server, settings):
    settings.AWS_ENDPOINT_URL = moto_server.endpoint
    use_prefix(settings, f"amibuild{time.time_ns()}")
    aws.reset_clients()
    try:
        first = run_buildami()
        image = current_image_id()
        assert f"Worker image {image}" in first
        ec2 = aws.client("ec2")
        described = ec2.describe_images(ImageIds=[image])["Images"][0]
        assert tags_of(described)[PREFIX_TAG] == settings.FACESITE_PREFIX
        assert tags_of(described)[ROLE_TAG] == "worker-image"

        # Idempotent: the role, profile and group are reused, the new image is the newest.
        run_buildami()
        assert current_image_id() != image
        groups = ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [f"{settings.FACESITE_PREFIX}-worker-sg"]}]
        )["SecurityGroups"]
        assert len(groups) == 1 and groups[0]["IpPermissions"] == []
        profile = aws.client("iam").get_instance_profile(
            InstanceProfileName=aws.names().worker_profile
        )["InstanceProfile"]
        assert [role["RoleName"] for role in profile["Roles"]] == [aws.names().worker_profile]
    finally:
        aws.reset_clients()


def test_aws_build_images_the_stopped_builder(mocked_aws, settings):
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=aws.names().gallery_bucket)
    ec2 = aws.client("ec2")
    plan = dataclasses.replace(plan_build(base_ami="ami-0abcdef1234567890"), poll=0.05, timeout=20)
    assert not plan.local

    seen_running: list[dict] = []

    def power_off_like_the_builder() -> None:
        # The builder's user data ends with `poweroff`: moto runs no user data, so do it here.
        own_ec2 = boto3.client("ec2", region_name=settings.AWS_REGION)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reservations = own_ec2.describe_instances(
                Filters=[{"Name": f"tag:{ROLE_TAG}", "Values": [BUILDER_ROLE]}]
            )["Reservations"]
            # moto lists the instance a moment before RunInstances attaches its profile: like
            # the real builder, power off only once the launch is complete.
            if reservations and "IamInstanceProfile" in reservations[0]["Instances"][0]:
                seen_running.append(reservations[0]["Instances"][0])
                own_ec2.stop_instances(InstanceIds=[seen_running[0]["InstanceId"]])
                return
            time.sleep(0.02)

    builder_thread = threading.Thread(target=power_off_like_the_builder)
    builder_thread.start()
    result = build(plan, say=lambda line: None)
    builder_thread.join()

    assert current_image_id() == result.image_id
    image = ec2.describe_images(ImageIds=[result.image_id])["Images"][0]
    assert tags_of(image)[PREFIX_TAG] == "amitest"
    assert tags_of(image)["facesite:source"]
    builder = ec2.describe_instances(
        Filters=[{"Name": f"tag:{ROLE_TAG}", "Values": [BUILDER_ROLE]}]
    )["Reservations"][0]["Instances"][0]
    assert builder["State"]["Name"] == "terminated"
    assert builder["ImageId"] == "ami-0abcdef1234567890"
    assert seen_running[0]["IamInstanceProfile"]["Arn"] == result.instance_profile
    assert [g["GroupId"] for g in seen_running[0]["SecurityGroups"]] == [result.security_group_id]
    # The code the builder fetches is where its user data says.
    source_key = f"{SOURCE_KEY_PREFIX}{tags_of(image)['facesite:source']}.tar.gz"
    s3.head_object(Bucket=aws.names().gallery_bucket, Key=source_key)
    user_data = ec2.describe_instance_attribute(
        InstanceId=builder["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    assert source_key.encode() in base64.b64decode(user_data)


def test_worker_policy_is_least_privilege(settings):
    names = Names("pfx", "us-east-1", "111122223333")
    policy = worker_policy(names)
    granted = {
        (action, statement["Resource"])
        for statement in policy["Statement"]
        for action in statement["Action"]
    }
    assert granted == {
        ("s3:GetObject", "arn:aws:s3:::pfx-in-bucket/*"),
        ("s3:GetObjectVersion", "arn:aws:s3:::pfx-in-bucket/*"),
        ("s3:PutObject", "arn:aws:s3:::pfx-out-bucket/*"),
        ("s3:GetObject", "arn:aws:s3:::pfx-gallery-bucket/*"),
        *(
            (action, "arn:aws:sqs:us-east-1:111122223333:pfx-req-queue")
            for action in (
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            )
        ),
        ("sqs:SendMessage", "arn:aws:sqs:us-east-1:111122223333:pfx-resp-queue"),
    }
    # No EC2 permission: a worker powers its own instance off from the OS.
    assert not any(action.startswith("ec2:") for action, _ in granted)
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    json.dumps(policy)


def test_builder_script_is_valid_bash_under_16_kb():
    script = builder_user_data("bucket", "ami-build/abc.tar.gz", "us-east-1", "ab" * 32)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert len(script.encode()) <= 16 * 1024
    assert "torch==2.13.0 torchvision==0.28.0" in script
    assert "AWS_SECRET_ACCESS_KEY" not in script and "AWS_ACCESS_KEY_ID" not in script
    assert script.rstrip().endswith("poweroff")


def test_worker_unit_runs_the_worker_with_a_warm_shutdown():
    unit = worker_unit()
    for line in (
        "EnvironmentFile=/etc/facesite/worker.env",
        "ExecStart=/opt/facesite/venv/bin/python manage.py runworker",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=90",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines()


def test_source_archive_is_reproducible():
    tree = source_tree()
    assert "manage.py" in tree.files and not any(f.startswith(".venv/") for f in tree.files)
    assert tree.archive() == tree.archive()
