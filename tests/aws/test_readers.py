"""ListedInstances: this deployment's instances, read cheaply and kept in step with EC2."""

import boto3
import pytest
from moto import mock_aws

from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Role, State
from facesite.aws.readers import ListedInstances, instances


@pytest.fixture
def ec2(monkeypatch):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def launch(ec2, name, prefix="pfx", role=str(Role.APP_TIER)):
    tags = [("Name", name), (PREFIX_TAG, prefix), (ROLE_TAG, role)]
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags]}]
    launched = ec2.run_instances(
        ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=spec
    )
    return launched["Instances"][0]["InstanceId"]


def counting_calls(ec2):
    calls = []
    ec2.meta.events.register("before-call.ec2.*", lambda model, **_: calls.append(model.name))
    return calls


def test_the_same_instances_as_describe_instances_with_tags_and_state(ec2):
    ours = [launch(ec2, f"app-tier-instance-{n}") for n in (1, 2, 3)]
    launch(ec2, "app-tier-instance-1", prefix="other")  # another deployment
    launch(ec2, "web-instance", role="web")
    ec2.stop_instances(InstanceIds=[ours[2]])
    reader = ListedInstances("pfx", Role.APP_TIER, states=[State.RUNNING])
    expected = instances(ec2, "pfx", Role.APP_TIER, states=[State.RUNNING])
    assert sorted(reader.read(ec2), key=lambda r: r.id) == sorted(expected, key=lambda r: r.id)
    assert {record.id for record in expected} == set(ours[:2])


def test_an_instance_is_described_once_while_it_runs(ec2):
    first = launch(ec2, "app-tier-instance-1")
    launch(ec2, "web-instance", role="web")
    reader = ListedInstances("pfx", Role.APP_TIER, states=[State.RUNNING])
    calls = counting_calls(ec2)
    assert [r.id for r in reader.read(ec2)] == [first]
    assert calls == ["DescribeInstanceStatus", "DescribeInstances"]
    calls.clear()
    assert [r.id for r in reader.read(ec2)] == [first]
    assert calls == ["DescribeInstanceStatus"]  # neither ours nor the web instance read again

    second = launch(ec2, "app-tier-instance-2")
    calls.clear()
    assert {r.id for r in reader.read(ec2)} == {first, second}
    assert calls == ["DescribeInstanceStatus", "DescribeInstances"]


def test_a_stopped_instance_leaves_and_comes_back_when_started(ec2):
    instance = launch(ec2, "app-tier-instance-1")
    reader = ListedInstances("pfx", Role.APP_TIER, states=[State.RUNNING])
    assert [r.state for r in reader.read(ec2)] == [State.RUNNING]
    ec2.stop_instances(InstanceIds=[instance])
    assert reader.read(ec2) == []
    assert reader.seen == {}  # forgotten, not kept for ever
    ec2.start_instances(InstanceIds=[instance])
    assert [r.id for r in reader.read(ec2)] == [instance]


def by_id(records):
    return sorted(records, key=lambda record: record.id)


def test_every_state_the_same_as_describe_instances(ec2):
    ours = [launch(ec2, f"app-tier-instance-{n}") for n in (1, 2, 3, 4)]
    launch(ec2, "app-tier-instance-1", prefix="other")
    ec2.stop_instances(InstanceIds=[ours[1]])
    ec2.terminate_instances(InstanceIds=[ours[2]])
    reader = ListedInstances("pfx", Role.APP_TIER)
    expected = instances(ec2, "pfx", Role.APP_TIER)
    assert by_id(reader.read(ec2)) == by_id(expected)
    assert {record.state for record in expected} == {
        State.RUNNING,
        State.STOPPED,
        State.TERMINATED,
    }


def test_a_state_change_is_seen_without_describing_again(ec2):
    instance = launch(ec2, "app-tier-instance-1")
    reader = ListedInstances("pfx", Role.APP_TIER)
    assert [r.state for r in reader.read(ec2)] == [State.RUNNING]
    ec2.stop_instances(InstanceIds=[instance])
    calls = counting_calls(ec2)
    assert [r.state for r in reader.read(ec2)] == [State.STOPPED]
    assert calls == ["DescribeInstanceStatus"]


def test_every_instance_is_read_again_after_the_refresh_interval(ec2):
    instance = launch(ec2, "app-tier-instance-1")
    now = [0.0]
    reader = ListedInstances("pfx", Role.APP_TIER, refresh_seconds=60, clock=lambda: now[0])
    assert [r.name for r in reader.read(ec2)] == ["app-tier-instance-1"]
    ec2.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "renamed"}])
    now[0] = 59.0
    assert [r.name for r in reader.read(ec2)] == ["app-tier-instance-1"]  # kept
    now[0] = 60.0
    calls = counting_calls(ec2)
    assert [r.name for r in reader.read(ec2)] == ["renamed"]
    assert calls == ["DescribeInstanceStatus", "DescribeInstances"]


def test_an_instance_listed_before_it_can_be_described_is_read_next_time(ec2, monkeypatch):
    # EC2 is eventually consistent: an instance DescribeInstanceStatus lists may be unknown to
    # DescribeInstances for a moment, which then leaves it out of a filtered answer.
    instance = launch(ec2, "app-tier-instance-1")
    reader = ListedInstances("pfx", Role.APP_TIER, states=[State.RUNNING])
    answers = iter([lambda **kwargs: {"Reservations": []}, ec2.describe_instances])
    original = ec2.get_paginator

    class DescribePages:
        def paginate(self, **kwargs):
            yield next(answers)(**kwargs)

    monkeypatch.setattr(
        ec2,
        "get_paginator",
        lambda name: DescribePages() if name == "describe_instances" else original(name),
    )
    assert reader.read(ec2) == []  # listed, not yet described: neither ours nor forgotten
    assert reader.seen == {}
    assert [r.id for r in reader.read(ec2)] == [instance]
