"""The emulator with AWS's timing (FACESITE_EMULATOR_REALISM=aws), and the code that must work
against it: the instance runner and buildami. Delays run at a tenth of AWS's."""

import dataclasses
import threading
import time
import uuid

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from ami.image.build import build, plan_build
from ami.local.harness import MotoServer, wait_until
from ami.local.realism import Delays, InstanceTimeline, LaggedCounts, configured
from ami.local.runner import InstanceRunner
from facesite import aws
from facesite.aws.clients import MAX_RETRIES
from facesite.aws.names import ROLE_TAG, Names, Role, app_tier_name
from tests.ami.conftest import use_prefix

SCALE = 0.1
SCALED = Delays().scaled(SCALE)


def realistic_env(
    throttle_rate: float = 0.0, scale: float = SCALE, seed: int | None = None
) -> dict[str, str]:
    return {
        "FACESITE_EMULATOR_REALISM": "aws",
        "FACESITE_EMULATOR_TIME_SCALE": str(scale),
        "FACESITE_EMULATOR_THROTTLE_RATE": str(throttle_rate),
        "FACESITE_EMULATOR_SEED": "" if seed is None else str(seed),
    }


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("realistic-moto"), env=realistic_env())
    yield server
    server.stop()


def client(server: MotoServer, service: str, attempts: int = 6):
    """A boto3 client of `server`; `attempts` counts the first call and its retries."""
    return server.client(
        service, Config(retries={"mode": "standard", "total_max_attempts": attempts})
    )


def state_of(ec2, instance_id: str) -> str:
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except ClientError as error:
        return error.response["Error"]["Code"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def states_until(ec2, instance_id: str, final: str, timeout: float = 10) -> list[str]:
    """The distinct states describe shows, in order, until `final`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(ec2, instance_id)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == final:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"{instance_id} never became {final}: {seen}")


# --- the pieces, on a fake clock ------------------------------------------------------------------


def test_a_seed_repeats_the_random_choices():
    def choices(seed: int | None) -> list[object]:
        realism = configured(time_scale=1, throttle_rate=0.5, seed=seed)
        return [(realism.throttles(), realism.vary(10)) for _ in range(20)]

    assert choices(7) == choices(7)
    assert choices(7) != choices(8)
    throttled = [throttled for throttled, _ in choices(7)]
    assert True in throttled and False in throttled


def test_a_timeline_moves_on_by_itself():
    now = [100.0]
    timeline = InstanceTimeline("running", clock=lambda: now[0])
    timeline.set("pending", then="running", after=15)
    assert timeline.state == "pending"
    now[0] += 14.9
    assert timeline.state == "pending"
    now[0] += 0.2
    assert timeline.state == "running"


def test_lagged_counts_answer_what_the_queue_held_lag_seconds_ago():
    now = [0.0]
    counts = LaggedCounts(lag=20, clock=lambda: now[0])
    counts.record(0, 0)
    now[0] = 5
    counts.record(100, 0)
    now[0] = 24
    assert counts.as_of_lag() == (0, 0)  # 20 s ago the burst had not arrived
    now[0] = 26
    counts.record(0, 0)  # all done
    assert counts.as_of_lag() == (100, 0)  # ...but the counts still say 100 waiting
    now[0] = 46.5
    assert counts.as_of_lag() == (0, 0)


def test_the_defaults_are_aws_like_and_scale_together():
    defaults = Delays()
    assert 10 <= defaults.launch_pending <= 20
    assert defaults.start_pending <= defaults.launch_pending
    assert SCALED.launch_pending == pytest.approx(defaults.launch_pending * SCALE)
    assert SCALED.sqs_count_lag == pytest.approx(defaults.sqs_count_lag * SCALE)


# --- the emulator ---------------------------------------------------------------------------------


def test_an_instance_is_hidden_then_pending_then_running(realistic):
    ec2 = client(realistic, "ec2")
    launched = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]
    assert launched["State"]["Name"] == "pending"
    seen = states_until(ec2, launched["InstanceId"], "running")
    assert seen == ["InvalidInstanceID.NotFound", "pending", "running"]


def test_stop_goes_through_stopping_and_start_through_pending(realistic):
    ec2 = client(realistic, "ec2")
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]
    instance_id = instance["InstanceId"]
    wait_until(lambda: state_of(ec2, instance_id) == "pending", 5, "visible")
    with pytest.raises(ClientError, match="IncorrectInstanceState"):
        ec2.stop_instances(InstanceIds=[instance_id])  # EC2 cannot stop a pending instance
    states_until(ec2, instance_id, "running")

    stopping = ec2.stop_instances(InstanceIds=[instance_id])["StoppingInstances"][0]
    assert stopping["CurrentState"]["Name"] == "stopping"
    with pytest.raises(ClientError, match="IncorrectInstanceState"):
        ec2.start_instances(InstanceIds=[instance_id])  # nor start a stopping one
    assert states_until(ec2, instance_id, "stopped") == ["stopping", "stopped"]

    ec2.start_instances(InstanceIds=[instance_id])
    assert states_until(ec2, instance_id, "running") == ["pending", "running"]
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert states_until(ec2, instance_id, "terminated") == ["shutting-down", "terminated"]


def test_repeated_calls_keep_the_transition_under_way(realistic):
    # A worker stopping its own instance while the scaler stops it too; a start sent twice.
    ec2 = client(realistic, "ec2")
    instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    wait_until(lambda: state_of(ec2, instance_id) == "pending", 5, "visible")
    ec2.start_instances(InstanceIds=[instance_id])
    states_until(ec2, instance_id, "running")
    ec2.stop_instances(InstanceIds=[instance_id])
    ec2.stop_instances(InstanceIds=[instance_id])
    assert states_until(ec2, instance_id, "stopped") == ["stopping", "stopped"]
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.terminate_instances(InstanceIds=[instance_id])
    assert states_until(ec2, instance_id, "terminated") == ["shutting-down", "terminated"]


def test_filters_skip_a_hidden_instance(tmp_path):
    # At AWS's own scale: a tenth of it hides a new instance for as little as 0.14 s, and on a
    # loaded machine the describe that follows the launch can come later than that.
    with MotoServer(tmp_path, env=realistic_env(scale=1.0)) as server:
        ec2 = client(server, "ec2")
        marker = uuid.uuid4().hex
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "m", "Value": marker}]}]
        ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, TagSpecifications=tags)
        by_tag = [{"Name": "tag:m", "Values": [marker]}]
        assert ec2.describe_instances(Filters=by_tag)["Reservations"] == []
        wait_until(lambda: ec2.describe_instances(Filters=by_tag)["Reservations"], 10, "visible")


def test_sqs_counts_lag_the_queue(realistic):
    sqs = client(realistic, "sqs")
    url = sqs.create_queue(QueueName=f"lag-{uuid.uuid4().hex[:8]}")["QueueUrl"]

    def visible() -> int:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    sent = time.monotonic()
    sqs.send_message(QueueUrl=url, MessageBody="x")
    assert visible() == 0  # the message is there; the count does not say so yet
    wait_until(lambda: visible() == 1, 10, "the count to catch up")
    lag = time.monotonic() - sent
    assert SCALED.sqs_count_lag * 0.9 <= lag <= SCALED.sqs_count_lag + 2

    received = sqs.receive_message(QueueUrl=url)["Messages"][0]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=received["ReceiptHandle"])
    assert visible() == 1  # gone, yet still counted for a while
    wait_until(lambda: visible() == 0, 10, "the count to catch up")


def test_a_new_instance_profile_is_refused_for_a_while(realistic):
    iam, ec2 = client(realistic, "iam"), client(realistic, "ec2")
    name = f"profile-{uuid.uuid4().hex[:8]}"
    iam.create_instance_profile(InstanceProfileName=name)
    created = time.monotonic()
    with pytest.raises(ClientError, match="iamInstanceProfile.name is invalid"):
        ec2.run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1, IamInstanceProfile={"Name": name}
        )

    def launched() -> bool:
        try:
            ec2.run_instances(
                ImageId="ami-12345678", MinCount=1, MaxCount=1, IamInstanceProfile={"Name": name}
            )
        except ClientError as error:
            assert "iamInstanceProfile" in str(error)
            return False
        return True

    wait_until(launched, 10, "the profile to propagate", interval=0.1)
    assert time.monotonic() - created >= SCALED.profile_propagation * (1 - 0.3)


def test_ec2_calls_are_throttled_at_the_configured_rate(tmp_path):
    # Seeded: at this rate 9 attempts all fail once in 512 calls, which a test must not leave
    # to chance (it did once, in CI). The calls below run one after another, so the seed fixes
    # which of them are refused.
    with MotoServer(tmp_path, env=realistic_env(throttle_rate=0.5, seed=14)) as server:
        ec2 = client(server, "ec2", attempts=1)  # no retries: see every refusal
        refused = 0
        for _ in range(60):
            try:
                ec2.describe_instances()
            except ClientError as error:
                assert error.response["Error"]["Code"] == "RequestLimitExceeded"
                refused += 1
        assert 10 <= refused <= 50
        # With the project's retry policy (standard mode: backoff with jitter) calls succeed.
        patient = client(server, "ec2", attempts=MAX_RETRIES + 1)
        started = time.monotonic()
        for _ in range(3):
            patient.describe_instances()
        print(f"3 calls at a 50% throttle rate took {time.monotonic() - started:.1f} s")


# --- what runs against it -------------------------------------------------------------------------


@pytest.fixture
def on_realistic(realistic, settings):
    settings.AWS_ENDPOINT_URL = realistic.endpoint
    settings.AWS_CREDENTIALS = ("realism", "realism")
    use_prefix(settings, f"real{uuid.uuid4().hex[:8]}")
    aws.reset_clients()
    yield realistic
    aws.reset_clients()


def test_the_runner_boots_an_instance_only_once_it_is_running(on_realistic, settings):
    ec2 = client(on_realistic, "ec2")
    names = Names(settings.FACESITE_PREFIX, "us-east-1", "123456789012")
    tags = names.tags(Role.APP_TIER, app_tier_name(1))
    instance_id = ec2.run_instances(
        ImageId="ami-12345678",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]
    runner = InstanceRunner()
    saw_pending = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = state_of(ec2, instance_id)
        to_boot = runner.running_instances()
        if state in ("InvalidInstanceID.NotFound", "pending"):
            saw_pending = saw_pending or state == "pending"
            # Still pending by a later describe: the runner's earlier answer cannot be running.
            if state_of(ec2, instance_id) != "running":
                assert instance_id not in to_boot
        elif state == "running":
            assert to_boot == {instance_id: app_tier_name(1)}
            break
        time.sleep(0.02)
    assert saw_pending


def test_buildami_waits_through_hidden_pending_and_running_builders(on_realistic, settings):
    """The flow that fails on AWS with botocore's instance_stopped waiter: the builder is not
    found, then pending, then running (installing) before it powers itself off."""
    aws.client("s3").create_bucket(Bucket=aws.names().gallery_bucket)
    plan = dataclasses.replace(
        plan_build(base_ami="ami-0abcdef1234567890"), local=False, poll=0.1, timeout=60
    )
    ec2 = client(on_realistic, "ec2")
    seen: list[str] = []

    def play_the_builder() -> None:
        # The builder's user data ends with `poweroff` once installed: done here once it runs.
        deadline = time.monotonic() + 30
        role = [{"Name": f"tag:{ROLE_TAG}", "Values": [str(Role.AMI_BUILDER)]}]
        prefix = [{"Name": "tag:facesite:prefix", "Values": [settings.FACESITE_PREFIX]}]
        while time.monotonic() < deadline:
            found = ec2.describe_instances(Filters=role + prefix)["Reservations"]
            state = found[0]["Instances"][0]["State"]["Name"] if found else "not found"
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "running":
                time.sleep(0.3)  # installing
                ec2.stop_instances(InstanceIds=[found[0]["Instances"][0]["InstanceId"]])
                return
            time.sleep(0.02)

    said: list[str] = []
    builder = threading.Thread(target=play_the_builder)
    builder.start()
    result = build(plan, say=said.append)
    builder.join()

    assert "pending" in seen and "running" in seen
    # The build's own wait saw the builder pending and running, and was not put off by either.
    waits = [line.split(": ", 1)[1] for line in said if line.startswith("i-")]
    assert waits[-1] == "stopped"
    assert {"pending", "running", "stopping"} <= set(waits)
    # The worker profile was created by this build: EC2 refused it at first, the build retried.
    assert any("IAM propagation" in line for line in said)
    image = ec2.describe_images(ImageIds=[result.image_id])["Images"][0]
    assert image["State"] == "available"


def test_botocores_instance_stopped_waiter_fails_on_a_pending_instance(realistic):
    """Why buildami has waits of its own: this waiter is what it used to call right after
    launching the builder, and it gives up at the first `pending`."""
    from botocore.exceptions import WaiterError

    ec2 = client(realistic, "ec2")
    instance_id = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    wait_until(lambda: state_of(ec2, instance_id) == "pending", 5, "visible")
    with pytest.raises(WaiterError, match="pending"):
        ec2.get_waiter("instance_stopped").wait(
            InstanceIds=[instance_id], WaiterConfig={"Delay": 1, "MaxAttempts": 3}
        )
