"""`manage.py deploy` and `manage.py teardown` end to end on the emulator, instant and with AWS's
timing: the plans name every resource, deploy is idempotent, teardown leaves nothing tagged."""

import base64
import subprocess
import uuid
from io import StringIO

import pytest
from django.core.management import call_command

from ami.deploy import find_tagged, web_user_data
from ami.local.harness import MotoServer, wait_until
from facesite import aws
from facesite.aws.names import PREFIX_TAG, WEB_INSTANCE_NAME, Names
from tests.ami.conftest import use_prefix

pytestmark = pytest.mark.e2e


def run(command: str, *args: str, stdin: str = "") -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


@pytest.fixture(scope="module")
def aws_timed_moto(tmp_path_factory):
    server = MotoServer(
        tmp_path_factory.mktemp("deploy-moto"),
        env={
            "FACESITE_EMULATOR_REALISM": "aws",
            "FACESITE_EMULATOR_TIME_SCALE": "0.1",
            "FACESITE_EMULATOR_THROTTLE_RATE": "0.02",
        },
    )
    yield server
    server.stop()


@pytest.fixture(params=["instant", "aws"])
def emulator(request, settings, moto_server):
    server = (
        moto_server if request.param == "instant" else request.getfixturevalue("aws_timed_moto")
    )
    settings.AWS_ENDPOINT_URL = server.endpoint
    settings.AWS_CREDENTIALS = ("deploy-test", "deploy-test")
    use_prefix(settings, f"dep{uuid.uuid4().hex[:8]}")
    aws.reset_clients()
    yield server
    aws.reset_clients()


def test_dry_run_plan_names_every_resource_and_calls_nothing(settings):
    settings.AWS_ENDPOINT_URL = "http://127.0.0.1:9"  # nothing listens: any call would fail
    aws.reset_clients()
    output = run("deploy", "--dry-run")
    names = aws.names()
    for resource in (
        names.input_bucket,
        names.output_bucket,
        names.gallery_bucket,
        names.request_queue,
        names.request_dead_letter_queue,
        names.response_queue,
        names.worker_profile,
        names.web_role,
        names.scaler_role,
        names.worker_security_group,
        names.web_security_group,
        "worker AMI",
        f"/{names.prefix}/django-secret-key",
        f"/{names.prefix}/admin-password",
        "Elastic IP",
        WEB_INSTANCE_NAME,
    ):
        assert resource in output, resource
    assert "Dry run: nothing was created." in output
    aws.reset_clients()


def test_deploy_twice_then_teardown_leaves_nothing_tagged(emulator, settings):
    first = run("deploy", "--poll", "0.1")
    assert "Deployed. facesite is at http://" in first
    names = aws.names()
    found = find_tagged(names)
    web = [i for i in found.instances if i[1] == WEB_INSTANCE_NAME]
    assert len(web) == 1 and web[0][2] == "running"
    assert len(found.roles) == 3 and len(found.instance_profiles) == 2
    assert len(found.buckets) == 3 and len(found.queues) == 3
    assert len(found.security_groups) == 2 and len(found.addresses) == 1
    assert len(found.parameters) == 2 and len(found.images) == 1
    ec2 = aws.client("ec2")
    address = ec2.describe_addresses(AllocationIds=[found.addresses[0][0]])["Addresses"][0]
    assert address["InstanceId"] == web[0][0]
    secret = aws.client("ssm").get_parameter(
        Name=f"/{names.prefix}/django-secret-key", WithDecryption=True
    )["Parameter"]["Value"]

    # Idempotent: the same image, web-instance, address and secrets.
    second = run("deploy", "--poll", "0.1")
    assert f"{WEB_INSTANCE_NAME} exists (running): kept" in second
    assert "is of commit" in second and find_tagged(names).images == found.images
    again = find_tagged(names)
    assert [i for i in again.instances if i[1] == WEB_INSTANCE_NAME] == web
    assert again.addresses == found.addresses
    assert (
        aws.client("ssm").get_parameter(
            Name=f"/{names.prefix}/django-secret-key", WithDecryption=True
        )["Parameter"]["Value"]
        == secret
    )

    # A web-instance of another commit is replaced, and the address moves to the new one.
    ec2.create_tags(Resources=[web[0][0]], Tags=[{"Key": "facesite:commit", "Value": "0" * 40}])
    third = run("deploy", "--poll", "0.1")
    assert "terminated, replaced by one of" in third
    replaced = [i for i in find_tagged(names).instances if i[1] == WEB_INSTANCE_NAME]
    current = [i for i in replaced if i[0] != web[0][0] and i[2] == "running"]
    assert len(current) == 1
    address = ec2.describe_addresses(AllocationIds=[found.addresses[0][0]])["Addresses"][0]
    assert address["InstanceId"] == current[0][0]

    # A stopped app-tier instance (the warm pool) is ours too.
    warm = ec2.run_instances(
        ImageId=again.images[0][0],
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": names.tags("app-tier", "app-tier-instance-1")}
        ],
    )["Instances"][0]["InstanceId"]

    def state(instance_id):
        found = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [instance_id]}])
        return [i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]]

    wait_until(lambda: state(warm) == ["running"], 10, "the warm instance running")
    ec2.stop_instances(InstanceIds=[warm])
    wait_until(lambda: state(warm) == ["stopped"], 10, "the warm instance stopped")
    plan = run("teardown", "--dry-run", "--delete-data")
    for expected in (
        WEB_INSTANCE_NAME,
        "app-tier-instance-1",
        names.web_role,
        names.input_bucket,
    ):
        assert expected in plan
    assert "Dry run: nothing was removed." in plan
    assert find_tagged(names).instances  # nothing removed

    run("teardown", "--yes", "--delete-data", "--poll", "0.1")
    assert find_tagged(names).empty()
    # Seen from outside teardown's own finder as well.
    ours = [{"Name": f"tag:{PREFIX_TAG}", "Values": [names.prefix]}]
    states = {
        i["State"]["Name"]
        for r in ec2.describe_instances(Filters=ours)["Reservations"]
        for i in r["Instances"]
    }
    assert states <= {"terminated"}
    assert ec2.describe_images(Owners=["self"], Filters=ours)["Images"] == []
    assert ec2.describe_security_groups(Filters=ours)["SecurityGroups"] == []
    assert ec2.describe_addresses(Filters=ours)["Addresses"] == []
    roles = {r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]}
    assert not roles & {names.worker_profile, names.web_role, names.scaler_role}
    buckets = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert not buckets & {names.input_bucket, names.output_bucket, names.gallery_bucket}
    assert not aws.client("sqs").list_queues(QueueNamePrefix=f"{names.prefix}-").get("QueueUrls")
    assert "Nothing tagged" in run("teardown", "--yes")  # and again: idempotent


def test_web_user_data_is_valid_bash_under_16_kb_without_secrets(settings):
    names = Names("pfx", "us-east-1", "111122223333")
    script = web_user_data(names, "203.0.113.7", "sg-0123", "ami-build/abc.tar.gz", "ab" * 32)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert len(script.encode()) <= 16 * 1024
    assert "DJANGO_SECRET_KEY=" not in script.replace('("DJANGO_SECRET_KEY"', "")
    assert "/pfx/django-secret-key" in script  # fetched at boot instead
    for unit in ("facesite-migrate.service", "facesite-web.service", "facesite-scaler.service"):
        assert unit in script
    assert "role_arn = arn:aws:iam::111122223333:role/pfx-scaler" in script
    assert "DJANGO_ALLOWED_HOSTS=203.0.113.7,127.0.0.1,localhost\n" in script
    assert "proxy_pass http://127.0.0.1:8000;" in script
    assert 'echo "abab' in script and "sha256sum --check" in script
    base64.b64encode(script.encode())
