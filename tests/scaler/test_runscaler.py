"""`manage.py runscaler` end to end against moto in-process: settings -> clients -> EC2."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import types
from unittest import mock

import boto3
import pytest
from django.core.management import call_command
from moto import mock_aws

from ami.image.bootscript import parse_user_data
from facesite import aws
from facesite.aws.names import PREFIX_TAG
from scaler.models import FleetInstance, ScalingEvent

PREFIX = "scalertest"


@pytest.fixture
def moto(settings, monkeypatch):
    """moto behind facesite.aws, configured as real AWS (no endpoint)."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        settings.AWS_ENDPOINT_URL = None
        settings.FACESITE_PREFIX = PREFIX
        settings.FACESITE_WARM_POOL = 0
        settings.FACESITE_AMI_ID = "ami-12345678"
        aws.reset_clients()
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        queue = sqs.create_queue(QueueName=f"{PREFIX}-req-queue")["QueueUrl"]
        assert queue == aws.names().request_queue_url
        iam = boto3.client("iam", region_name=settings.AWS_REGION)
        iam.create_instance_profile(InstanceProfileName=aws.names().worker_profile)
        yield types.SimpleNamespace(
            sqs=sqs, queue=queue, ec2=boto3.client("ec2", region_name=settings.AWS_REGION)
        )
    aws.reset_clients()


def app_tier(ec2) -> dict[str, dict]:
    pages = ec2.describe_instances(Filters=[{"Name": f"tag:{PREFIX_TAG}", "Values": [PREFIX]}])
    instances = [i for r in pages["Reservations"] for i in r["Instances"]]
    return {next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i for i in instances}


# The command closes its database connection after each tick, as in production: on
# PostgreSQL that ends a test's enclosing transaction, so these run without one.
@pytest.mark.django_db(transaction=True)
def test_once_launches_one_instance_per_waiting_message(moto, settings):
    for n in range(4):
        moto.sqs.send_message(QueueUrl=moto.queue, MessageBody=f"request {n}")
    call_command("runscaler", "--once")
    instances = app_tier(moto.ec2)
    assert sorted(instances) == [f"app-tier-instance-{n}" for n in range(1, 5)]
    first = instances["app-tier-instance-1"]
    assert first["ImageId"] == "ami-12345678"
    profile = first["IamInstanceProfile"]["Arn"]
    assert profile.endswith(f"/{aws.names().worker_profile}")
    user_data = moto.ec2.describe_instance_attribute(
        InstanceId=first["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    environment = parse_user_data(base64.b64decode(user_data).decode())
    assert environment["FACESITE_PREFIX"] == PREFIX
    (event,) = ScalingEvent.objects.all()
    assert (event.action, event.result, event.visible) == ("launch", "ok", 4)
    # A second pass (a fresh process, memory empty) sees them and launches nothing more.
    call_command("runscaler", "--once")
    assert len(app_tier(moto.ec2)) == 4
    assert ScalingEvent.objects.count() == 1
    assert FleetInstance.objects.filter(state="running").count() == 4


# The command closes its database connection after each tick, as in production: on
# PostgreSQL that ends a test's enclosing transaction, so these run without one.
@pytest.mark.django_db(transaction=True)
def test_once_starts_stopped_instances_and_never_stops_on_a_fresh_start(moto):
    call_command("runscaler", "--once")  # empty queue, no fleet: nothing to do
    assert app_tier(moto.ec2) == {}
    moto.sqs.send_message(QueueUrl=moto.queue, MessageBody="one")
    call_command("runscaler", "--once")
    (instance,) = app_tier(moto.ec2).values()
    moto.ec2.stop_instances(InstanceIds=[instance["InstanceId"]])
    call_command("runscaler", "--once")
    (instance,) = app_tier(moto.ec2).values()
    assert instance["State"]["Name"] in ("pending", "running")
    assert list(ScalingEvent.objects.values_list("action", flat=True)) == ["start", "launch"]
    # Work gone: a single pass never scales in (it has not seen the queue stay empty).
    moto.sqs.purge_queue(QueueUrl=moto.queue)
    call_command("runscaler", "--once")
    (instance,) = app_tier(moto.ec2).values()
    assert instance["State"]["Name"] == "running"


@pytest.mark.django_db
def test_sigterm_finishes_the_tick_and_returns(moto):
    previous = signal.getsignal(signal.SIGTERM)
    ticks: list[int] = []

    def terminate_once_running() -> None:
        # Wait for the command's handler and a few ticks: the default handler would kill pytest.
        while signal.getsignal(signal.SIGTERM) is previous or len(ticks) < 3:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    from scaler.loop import ScalerLoop

    real_tick = ScalerLoop.tick

    def counted_tick(self):
        ticks.append(1)
        return real_tick(self)

    killer = threading.Thread(target=terminate_once_running, daemon=True)
    killer.start()
    with mock.patch.object(ScalerLoop, "tick", counted_tick):
        call_command("runscaler", "--tick", "0.05")  # returns instead of dying
    killer.join(timeout=1)
    assert len(ticks) >= 3
    assert signal.getsignal(signal.SIGTERM) is previous
