"""The roles of the worker, the web tier and the scaler: created by the project, read back from
the emulator, least privilege, and (with moto's IAM enforcement switched on) a worker's
credentials cannot stop another worker's instance."""

import json
from io import StringIO

import boto3
import pytest
from botocore.exceptions import ClientError
from django.core.management import call_command
from moto.core.authorization import enable_iam_authentication

from facesite import aws
from facesite.aws.iam import (
    POLICY_NAME,
    ensure_roles,
    scaler_policy,
    web_policy,
    worker_policy,
)
from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Names, Role, app_tier_name
from facesite.aws.provision import provision_storage
from tests.ami.conftest import mocked_aws  # noqa: F401 - a fixture

NAMES = Names("pfx", "us-east-1", "111122223333")
IMAGES = "arn:aws:ec2:us-east-1::image/*"
ALL_POLICIES = {
    "worker": worker_policy(NAMES),
    "web": web_policy(NAMES),
    "scaler": scaler_policy(NAMES),
}


def as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("role", sorted(ALL_POLICIES))
def test_no_wildcard_action_and_wildcard_resources_only_for_read_only_describes(role):
    for statement in ALL_POLICIES[role]["Statement"]:
        actions, resources = as_list(statement["Action"]), as_list(statement["Resource"])
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in actions), statement
        if any(resource == "*" for resource in resources):
            assert all(action.startswith("ec2:Describe") for action in actions), statement
        # Every other resource names this deployment's own buckets, queues, roles, or EC2
        # resources of this account and region.
        for resource in resources:
            if resource != "*":
                assert (
                    "pfx-" in resource
                    or ":111122223333:" in resource
                    or resource.startswith("arn:aws:ec2:us-east-1::image/")
                ), resource


def test_the_worker_has_no_ec2_permission_at_all():
    actions = {a for s in ALL_POLICIES["worker"]["Statement"] for a in as_list(s["Action"])}
    assert not any(action.startswith(("ec2:", "iam:", "sts:")) for action in actions)


def test_the_scaler_touches_only_this_prefixs_app_tier():
    statements = ALL_POLICIES["scaler"]["Statement"]

    def granting(action):
        return [s for s in statements if action in as_list(s["Action"])]

    for action in ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"):
        (statement,) = granting(action)
        assert statement["Condition"] == {
            "StringEquals": {
                f"aws:ResourceTag/{PREFIX_TAG}": "pfx",
                f"aws:ResourceTag/{ROLE_TAG}": "app-tier",
            }
        }
    launches = granting("ec2:RunInstances")
    instance_grant = next(
        s for s in launches if "arn:aws:ec2:us-east-1:111122223333:instance/*" in s["Resource"]
    )
    assert instance_grant["Condition"]["StringEquals"][f"aws:RequestTag/{PREFIX_TAG}"] == "pfx"
    image_grant = next(s for s in launches if as_list(s["Resource"]) == [IMAGES])
    assert image_grant["Condition"]["StringEquals"][f"ec2:ResourceTag/{ROLE_TAG}"] == (
        "worker-image"
    )
    (tagging,) = granting("ec2:CreateTags")
    assert tagging["Condition"] == {"StringEquals": {"ec2:CreateAction": "RunInstances"}}
    (passing,) = granting("iam:PassRole")
    assert passing["Resource"] == "arn:aws:iam::111122223333:role/pfx-worker"
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_only_the_web_role_may_become_the_scaler():
    (assume,) = [
        s for s in ALL_POLICIES["web"]["Statement"] if "sts:AssumeRole" in as_list(s["Action"])
    ]
    assert assume["Resource"] == "arn:aws:iam::111122223333:role/pfx-scaler"


def test_provision_creates_the_three_roles_and_they_read_back_as_written(mocked_aws):  # noqa: F811
    out = StringIO()
    call_command("provision", stdout=out)
    names = aws.names()
    iam = aws.client("iam")
    expected = {
        names.worker_profile: ("worker", worker_policy(names)),
        names.web_role: ("web", web_policy(names)),
        names.scaler_role: ("scaler", scaler_policy(names)),
    }
    for role, (kind, policy) in expected.items():
        assert f"IAM role {role}" in out.getvalue()
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == [POLICY_NAME[kind]]
        stored = iam.get_role_policy(RoleName=role, PolicyName=POLICY_NAME[kind])
        document = stored["PolicyDocument"]
        assert (json.loads(document) if isinstance(document, str) else document) == policy
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    trust = iam.get_role(RoleName=names.scaler_role)["Role"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {
        "AWS": f"arn:aws:iam::{names.account}:role/{names.web_role}"
    }
    # Idempotent: a second run changes nothing.
    call_command("provision", stdout=StringIO())
    assert len(iam.list_roles()["Roles"]) == 3


def clients_as(names, role, session, region):
    """A maker of boto3 clients holding the credentials of `role` (assumed as `session`)."""
    credentials = aws.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{names.account}:role/{role}", RoleSessionName=session
    )["Credentials"]

    def client(service):
        return boto3.client(
            service,
            region_name=region,
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )

    return client


def test_a_worker_cannot_stop_another_workers_instance(mocked_aws, settings):  # noqa: F811
    names = aws.names()
    provision_storage(names, visibility_timeout=30, max_receives=5)
    ensure_roles(names)
    ec2 = aws.client("ec2")
    instances = [
        ec2.run_instances(
            ImageId="ami-12345678",
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": names.tags(Role.APP_TIER, app_tier_name(n))}
            ],
        )["Instances"][0]["InstanceId"]
        for n in (1, 2)
    ]
    # The credentials an app-tier instance gets from its profile: the worker role's.
    as_worker = clients_as(names, names.worker_profile, instances[0], settings.AWS_REGION)

    queue_url = aws.client("sqs").get_queue_url(QueueName=names.request_queue)["QueueUrl"]
    with enable_iam_authentication():
        # Enforcement is on: what the policy grants works...
        as_worker("sqs").receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
        # ...and what it does not is refused: another worker's instance, or even its own.
        for target in (instances[1], instances[0]):
            with pytest.raises(ClientError) as refused:
                as_worker("ec2").stop_instances(InstanceIds=[target])
            assert refused.value.response["Error"]["Code"] in (
                "AccessDenied",
                "UnauthorizedOperation",
            )
        with pytest.raises(ClientError):
            as_worker("sqs").send_message(QueueUrl=queue_url, MessageBody="not a worker's job")
    states = ec2.describe_instances(InstanceIds=instances)["Reservations"]
    assert {i["State"]["Name"] for r in states for i in r["Instances"]} == {"running"}


def test_the_scalers_role_may_observe_the_fleet(mocked_aws, settings):  # noqa: F811
    from scaler.fleet import Fleet

    names = aws.names()
    provision_storage(names, visibility_timeout=30, max_receives=5)
    ensure_roles(names)
    launched = aws.client("ec2").run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": names.tags(Role.APP_TIER, app_tier_name(1))}
        ],
    )["Instances"][0]["InstanceId"]
    as_scaler = clients_as(names, names.scaler_role, "scaler", settings.AWS_REGION)

    fleet = Fleet(
        as_scaler("ec2"),
        as_scaler("sqs"),
        prefix=names.prefix,
        queue_url=aws.client("sqs").get_queue_url(QueueName=names.request_queue)["QueueUrl"],
        image_id=lambda: "ami-12345678",
        user_data=lambda: "",
        instance_type="t3.micro",
    )
    with enable_iam_authentication():
        assert [instance.id for instance in fleet.describe()] == [launched]
        assert fleet.queue_depth() == (0, 0)
