"""The EC2/SQS driver against moto in-process."""

from __future__ import annotations

import base64
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto import mock_aws

from facesite.aws.names import (
    CONFIG_TAG,
    IMAGE_TAG,
    LAUNCH_TOKEN_TAG,
    PREFIX_TAG,
    ROLE_TAG,
    Role,
    State,
)
from scaler.fleet import Fleet, NotSent, classify, config_digest
from scaler.policy import Action, ActionResult, Kind

USER_DATA = "#!/bin/sh\nexec facesite-worker\n"


@pytest.fixture(scope="module")
def aws():
    """One moto for the module (its EC2 takes a second to start); tests keep apart by prefix."""
    with pytest.MonkeyPatch.context() as patch, mock_aws():
        patch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
        yield (
            boto3.client("ec2", region_name="us-east-1"),
            boto3.client("sqs", region_name="us-east-1"),
        )


def make_fleet(aws, prefix="", **kwargs) -> Fleet:
    ec2, sqs = aws
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=f"{prefix}-req-queue")["QueueUrl"]
    options = {
        "prefix": prefix,
        "queue_url": url,
        "image_id": lambda: "ami-12345678",
        "user_data": lambda: USER_DATA,
        "instance_type": "t3.micro",
        **kwargs,
    }
    return Fleet(ec2, sqs, **options)


def offline_fleet(ec2: object = None, **kwargs) -> Fleet:
    """A fleet whose EC2 is `ec2` (a stand-in, or none) and that has no queue."""
    options = {
        "prefix": "p",
        "queue_url": "",
        "image_id": str,
        "user_data": str,
        "instance_type": "",
    }
    return Fleet(ec2, None, **{**options, **kwargs})


@pytest.fixture
def fleet(aws) -> Fleet:
    return make_fleet(aws)


def raw_instances(aws, fleet: Fleet) -> list[dict]:
    ec2, _ = aws
    pages = ec2.describe_instances(Filters=fleet.names.tag_filters(Role.APP_TIER))["Reservations"]
    return [raw for reservation in pages for raw in reservation["Instances"]]


def launch_action(n: int, generation: int = 1, retry: bool = False) -> Action:
    return Action(Kind.LAUNCH, f"app-tier-instance-{n}", "test", generation=generation, retry=retry)


def state_action(kind: Kind, instance_id: str) -> Action:
    return Action(kind, "app-tier-instance-?", "test", instance_id=instance_id)


def states(fleet: Fleet) -> dict[int, State]:
    return {i.number: i.state for i in fleet.describe()}


def test_launch_tags_names_and_user_data(aws, fleet):
    ec2, _ = aws
    outcomes = fleet.apply([launch_action(1), launch_action(2)])
    assert [o.result for o in outcomes] == [ActionResult.OK, ActionResult.OK]
    instances = {i.number: i for i in fleet.describe()}
    assert set(instances) == {1, 2}
    assert outcomes[0].detail == instances[1].id
    raw = ec2.describe_instances(InstanceIds=[instances[1].id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags["Name"] == "app-tier-instance-1"
    assert tags[PREFIX_TAG] == fleet.prefix and tags[ROLE_TAG] == "app-tier"
    assert tags[LAUNCH_TOKEN_TAG] == fleet.token("app-tier-instance-1", 1)
    assert raw["ImageId"] == "ami-12345678" and raw["InstanceType"] == "t3.micro"
    assert "IamInstanceProfile" not in raw  # only when configured
    user_data = ec2.describe_instance_attribute(InstanceId=raw["InstanceId"], Attribute="userData")
    assert base64.b64decode(user_data["UserData"]["Value"]).decode() == USER_DATA


def test_stop_and_start_by_id(fleet):
    fleet.apply([launch_action(1), launch_action(2)])
    ids = {i.number: i.id for i in fleet.describe()}
    outcomes = fleet.apply([state_action(Kind.STOP, ids[1]), state_action(Kind.STOP, ids[2])])
    assert all(o.result == ActionResult.OK for o in outcomes)
    assert states(fleet) == {1: State.STOPPED, 2: State.STOPPED}
    fleet.apply([state_action(Kind.START, ids[2])])
    assert states(fleet) == {1: State.STOPPED, 2: State.RUNNING}
    fleet.apply([state_action(Kind.TERMINATE, ids[1])])
    assert states(fleet) == {1: State.TERMINATED, 2: State.RUNNING}


def test_a_number_is_reused_after_termination(fleet):
    fleet.apply([launch_action(1)])
    (first,) = fleet.describe()
    fleet.apply([state_action(Kind.TERMINATE, first.id)])
    fleet.apply([launch_action(1, generation=2)])
    by_state = {i.state: i for i in fleet.describe()}
    assert by_state[State.TERMINATED].id == first.id
    assert by_state[State.RUNNING].number == 1 and by_state[State.RUNNING].id != first.id


def test_a_retried_launch_returns_the_same_instance(fleet):
    (first,) = fleet.apply([launch_action(3, generation=7)])
    (again,) = fleet.apply([launch_action(3, generation=7, retry=True)])
    assert again.result == ActionResult.OK and again.detail == first.detail
    assert len(fleet.describe()) == 1
    # A new generation is a new launch.
    fleet.apply([launch_action(3, generation=8, retry=True)])
    assert len(fleet.describe()) == 2


def test_tokens_differ_by_generation_and_by_process():
    a, b = offline_fleet(), offline_fleet()
    name = "app-tier-instance-15"
    assert a.token(name, 1) == a.token(name, 1) != a.token(name, 2)
    assert a.token(name, 1) != b.token(name, 1)
    assert len(a.token(name, 10**9)) <= 64  # EC2's limit


def test_only_this_deployments_tagged_instances_are_seen(aws, fleet):
    ec2, _ = aws
    other = make_fleet(aws)
    other.apply([launch_action(1)])

    def run(tags):
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags]}]
        ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=spec)

    run([("Name", "app-tier-instance-4")])  # no project tag
    run([("Name", "app-tier-instance-5"), (PREFIX_TAG, fleet.prefix)])  # no role tag
    run([("Name", "web-instance"), (PREFIX_TAG, fleet.prefix), (ROLE_TAG, "app-tier")])
    fleet.apply([launch_action(2)])
    assert [i.number for i in fleet.describe()] == [2]
    assert [i.number for i in other.describe()] == [1]


def test_a_refused_batch_is_retried_one_by_one(fleet):
    fleet.apply([launch_action(1), launch_action(2)])
    ids = sorted(i.id for i in fleet.describe())
    actions = [state_action(Kind.STOP, i) for i in [*ids, "i-0123456789abcdef0"]]
    outcomes = fleet.apply(actions)
    assert [o.result for o in outcomes] == [ActionResult.OK, ActionResult.OK, ActionResult.FAILED]
    assert "InvalidInstanceID" in outcomes[2].detail
    assert set(states(fleet).values()) == {State.STOPPED}


def test_instance_profile_security_group_and_key_are_passed_when_configured(aws):
    ec2, _ = aws
    group = ec2.create_security_group(GroupName=uuid.uuid4().hex, Description="w")["GroupId"]
    ec2.create_key_pair(KeyName=f"ops-{group}")
    fleet = make_fleet(aws, security_group=group, key_name=f"ops-{group}")
    fleet.apply([launch_action(1)])
    (raw,) = raw_instances(aws, fleet)
    assert raw["KeyName"] == f"ops-{group}"
    assert [g["GroupId"] for g in raw["SecurityGroups"]] == [group]


def test_missing_image_fails_the_launch_not_the_caller(aws):
    def no_image() -> str:
        raise LookupError("no AMI built yet")

    fleet = make_fleet(aws, image_id=no_image)
    (outcome,) = fleet.apply([launch_action(1)])
    assert outcome.result == ActionResult.FAILED and "no AMI built yet" in outcome.detail
    assert fleet.describe() == ()


def test_queue_depth_counts_visible_and_in_flight(aws, fleet):
    _, sqs = aws
    for n in range(3):
        sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=str(n))
    sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=30)
    assert fleet.queue_depth() == (2, 1)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "RunInstances",
    )


def test_errors_are_classified_definite_or_unknown():
    assert classify(client_error("InvalidAMIID.NotFound", 400)) == ActionResult.FAILED
    assert classify(client_error("RequestLimitExceeded", 503)) == ActionResult.UNKNOWN
    assert classify(client_error("RequestLimitExceeded", 400)) == ActionResult.UNKNOWN
    assert classify(client_error("InternalError", 500)) == ActionResult.UNKNOWN
    assert classify(EndpointConnectionError(endpoint_url="http://x")) == ActionResult.UNKNOWN
    assert classify(NotSent("x")) == ActionResult.FAILED


class ThrottledEC2:
    """Refuses the first `throttled` calls with RequestLimitExceeded."""

    def __init__(self, throttled: int) -> None:
        self.throttled, self.calls = throttled, 0

    def stop_instances(self, **kwargs):
        self.calls += 1
        if self.calls <= self.throttled:
            raise client_error("RequestLimitExceeded", 400)
        return {}


def test_throttling_that_persists_is_an_unknown_outcome():
    ec2 = ThrottledEC2(throttled=100)
    fleet = offline_fleet(ec2)
    (outcome,) = fleet.apply([state_action(Kind.STOP, "i-1")])
    # The client's retry policy (facesite.aws.clients) is the only one: the driver adds none.
    assert outcome.result == ActionResult.UNKNOWN and ec2.calls == 1


def test_launches_record_image_and_configuration_and_old_builds_are_stale(aws):
    ec2, _ = aws
    old = make_fleet(aws, image_id=lambda: "ami-00000001")
    instance_id = old.launch("app-tier-instance-1", 1)
    tags = {t["Key"]: t["Value"] for t in raw_instances(aws, old)[0]["Tags"]}
    assert tags[IMAGE_TAG] == "ami-00000001"
    assert tags[CONFIG_TAG] == config_digest(USER_DATA)
    ec2.stop_instances(InstanceIds=[instance_id])
    assert [i.stale for i in old.describe()] == [False]

    def stale_with(**kwargs) -> list[bool]:
        fleet = make_fleet(aws, prefix=old.prefix, **kwargs)
        return [i.stale for i in fleet.describe()]

    assert stale_with(image_id=lambda: "ami-00000002") == [True]  # a rebuilt image
    assert stale_with(image_id=lambda: "ami-00000001", user_data=lambda: "other") == [True]
    assert stale_with(image_id=lambda: "ami-00000001") == [False]

    def no_image() -> str:
        raise LookupError("no worker image")

    assert stale_with(image_id=no_image) == [False]  # unknown: nothing is replaced
    ec2.start_instances(InstanceIds=[instance_id])
    assert stale_with(image_id=lambda: "ami-00000002") == [False]  # running: left to work
