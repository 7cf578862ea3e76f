"""`manage.py deploy` and `manage.py teardown`: the whole service on an account, and back.

deploy (idempotent: a second run creates nothing new, and keeps secrets and web-instance):
  buckets, queues, the worker/web/scaler roles, the worker and web security groups, the worker
  AMI (buildami), two SSM SecureString parameters (Django's secret key and the admin password,
  generated once: they never travel in user data), an Elastic IP, and `web-instance` (a current
  Amazon Linux 2023 whose user data installs the pinned project from `git archive` of the commit
  and runs nginx -> gunicorn and the scaler under systemd, `migrate` first); prints the URL.

teardown: every resource tagged `facesite:prefix=<prefix>`, found by its tags rather than by
  name: instances in any state (terminated, then waited for), Elastic IPs, AMIs with their
  snapshots, security groups, roles with their instance profiles and policies, SSM parameters,
  queues; buckets (with every object version) only with `--delete-data`.

On the emulator (`FACESITE_AWS_ENDPOINT` set) the same calls run against moto: nothing boots,
so web-instance is only listed (from the worker image, as `make run` shows it).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings

from ami.image.bootscript import USER_DATA_LIMIT, render_boot_env_lines, render_template
from ami.image.build import (
    AL2023_PARAMETER,
    APP_DIR,
    COMMIT_TAG,
    VENV_DIR,
    BuildError,
    BuildResult,
    build,
    install_values,
    plan_build,
    run_instance,
    upload_source,
    wait_for_instance,
)
from ami.image.lookup import current_image_id
from facesite import aws
from facesite.aws.iam import ensure_roles, ensure_worker_role, role_arn
from facesite.aws.iam import roles as role_names
from facesite.aws.names import PREFIX_TAG, WEB_INSTANCE_NAME, Names, Role, State
from facesite.aws.provision import (
    ProvisionError,
    ensure_web_security_group,
    ensure_worker_security_group,
    provision_storage,
)

Say = Callable[[str], None]

WEB_INSTANCE_TYPE = "t3.large"  # the web tier loads the engine for enroll/recognize commands
WEB_ROOT_VOLUME_GB = 16
WEB_ENV_FILE = "/etc/facesite/web.env"


class DeployError(Exception):
    """Something could not be created or removed; the message says what and what is left."""


def secret_parameter(names: Names, what: str) -> str:
    return f"/{names.prefix}/{what}"


def elastic_ip_name(names: Names) -> str:
    return f"{names.prefix}-web-ip"


def _local() -> bool:
    return bool(settings.AWS_ENDPOINT_URL)


def deployment_names() -> Names:
    """This deployment's names, checked against the account STS reports for the credentials in
    use: queue URLs, ARNs and bucket names must carry the right one."""
    names = aws.names()
    account = aws.client("sts").get_caller_identity()["Account"]
    if account != names.account:
        raise DeployError(
            f"FACESITE_AWS_ACCOUNT_ID is {names.account} but the credentials are of account "
            f"{account}: unset it, or use that account's credentials"
        )
    return names


# --- the plan -------------------------------------------------------------------------------------


def deploy_plan(names: Names) -> list[str]:
    """What deploy creates or updates, resource by resource (no AWS call)."""
    where = f"the emulator at {settings.AWS_ENDPOINT_URL}" if _local() else "AWS"
    base = "the worker image" if _local() else f"the latest Amazon Linux 2023 ({AL2023_PARAMETER})"
    return [
        f"Deploy prefix '{names.prefix}' on {where} ({names.region}), account from STS:",
        f"- S3 buckets {names.input_bucket} (versioned; uploads expire after "
        f"{settings.FACESITE_INPUT_RETENTION_DAYS} days), {names.output_bucket}, "
        f"{names.gallery_bucket}; public access blocked",
        f"- SQS queues {names.request_queue} (1 KB messages, dead letters to "
        f"{names.request_dead_letter_queue}), {names.response_queue}",
        f"- IAM roles {names.worker_profile} (instance profile; S3/SQS of this prefix, no EC2), "
        f"{names.web_role} (instance profile; S3/SQS of the web tier, may assume the scaler "
        f"role), {names.scaler_role} (EC2 on this prefix's app tier only, PassRole on the "
        "worker role only)",
        f"- security groups {names.worker_security_group} (nothing in), "
        f"{names.web_security_group} (TCP 80 and 443 in)",
        "- the worker AMI (manage.py buildami)",
        f"- SSM SecureString parameters {secret_parameter(names, 'django-secret-key')} and "
        f"{secret_parameter(names, 'admin-password')} (generated once, kept on redeploy)",
        f"- Elastic IP {elastic_ip_name(names)}",
        f"- {WEB_INSTANCE_NAME}: a {WEB_INSTANCE_TYPE} from {base}, profile {names.web_role}, "
        "running nginx -> gunicorn (web tier) and runscaler under systemd, migrate first; its "
        "URL is printed at the end",
    ]


# --- deploy ---------------------------------------------------------------------------------------


@dataclass
class Deployment:
    names: Names
    resources: dict[str, str] = field(default_factory=dict)
    url: str = ""


def deploy(names: Names, say: Say, poll: float = 5.0, timeout: float = 600.0) -> Deployment:
    result = Deployment(names)
    storage = provision_storage(
        names,
        settings.FACESITE_VISIBILITY_TIMEOUT,
        settings.FACESITE_MAX_RECEIVES,
        settings.FACESITE_INPUT_RETENTION_DAYS,
    )
    result.resources.update(storage)
    for name, state in storage.items():
        say(f"{name}: {state}")
    for role, arn in ensure_roles(names).items():
        say(f"IAM role {role}: {arn}")
        result.resources[role] = arn

    plan = plan_build()
    try:
        built = reuse_image(names, plan.source.commit, say) or build(
            plan, say=lambda line: say(f"  {line}")
        )
    except (BuildError, ProvisionError) as error:
        raise DeployError(f"the worker image: {error}") from error
    result.resources["worker image"] = built.image_id
    web_group = ensure_web_security_group(names)
    say(f"security group {names.web_security_group}: {web_group}")

    for what in ("django-secret-key", "admin-password"):
        created = ensure_secret(names, what)
        say(f"SSM {secret_parameter(names, what)}: {'created' if created else 'kept'}")

    address = ensure_elastic_ip(names)
    say(f"Elastic IP {address['PublicIp']} ({address['AllocationId']})")
    instance = ensure_web_instance(
        names, web_group, address["PublicIp"], built, plan.source.commit, say, poll
    )
    say(f"{WEB_INSTANCE_NAME}: {instance}")
    wait_for_instance(aws.client("ec2"), instance, State.RUNNING, timeout, poll, say)
    if address.get("InstanceId") != instance:
        # Moved from a replaced web-instance, if there was one.
        aws.client("ec2").associate_address(
            AllocationId=address["AllocationId"], InstanceId=instance, AllowReassociation=True
        )
    result.resources[WEB_INSTANCE_NAME] = instance
    result.url = f"http://{address['PublicIp']}/"
    return result


def reuse_image(names: Names, commit: str, say: Say) -> BuildResult | None:
    """An available worker image of this prefix built from `commit`, with the role and security
    group brought up to date: a redeploy of the same commit builds nothing (on AWS a build
    takes half an hour)."""
    images = aws.client("ec2").describe_images(
        Owners=["self"],
        Filters=[
            *names.tag_filters(Role.WORKER_IMAGE),
            {"Name": f"tag:{COMMIT_TAG}", "Values": [commit]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    if not images:
        return None
    image = max(images, key=lambda i: i["CreationDate"])["ImageId"]
    say(f"worker image {image} is of commit {commit[:12]}: kept")
    return BuildResult(
        image_id=image,
        instance_profile=ensure_worker_role(names),
        security_group_id=ensure_worker_security_group(names),
    )


def ensure_secret(names: Names, what: str) -> bool:
    """A random SecureString parameter, created once; True when created now."""
    ssm = aws.client("ssm")
    name = secret_parameter(names, what)
    try:
        ssm.get_parameter(Name=name)
        return False
    except ClientError as error:
        if error.response["Error"]["Code"] != "ParameterNotFound":
            raise
    ssm.put_parameter(
        Name=name,
        Value=secrets.token_urlsafe(48),
        Type="SecureString",
        Description=f"facesite {what} of prefix {names.prefix}",
        Tags=[{"Key": PREFIX_TAG, "Value": names.prefix}],
    )
    return True


def ensure_elastic_ip(names: Names) -> dict[str, Any]:
    ec2 = aws.client("ec2")
    found = ec2.describe_addresses(
        Filters=[{"Name": f"tag:{PREFIX_TAG}", "Values": [names.prefix]}]
    )["Addresses"]
    if found:
        return found[0]
    allocated = ec2.allocate_address(
        Domain="vpc",
        TagSpecifications=[
            {
                "ResourceType": "elastic-ip",
                "Tags": [*names.tags(Role.WEB, elastic_ip_name(names))],
            }
        ],
    )
    return {"PublicIp": allocated["PublicIp"], "AllocationId": allocated["AllocationId"]}


def web_environment(names: Names, public_ip: str, worker_group: str) -> dict[str, str]:
    """web-instance's configuration (no secrets: those come from SSM at boot)."""
    # The Elastic IP is the service's address; loopback for checks on the machine itself.
    hosts = f"{public_ip},127.0.0.1,localhost"
    return {
        "FACESITE_PREFIX": names.prefix,
        "AWS_DEFAULT_REGION": names.region,
        "FACESITE_AWS_ACCOUNT_ID": names.account,
        "FACESITE_BUCKET_SUFFIX": names.bucket_suffix,
        "FACESITE_AWS_ENDPOINT": "",
        "DJANGO_ALLOWED_HOSTS": hosts,
        "FACESITE_BIND": "127.0.0.1:8000",
        "FACESITE_MAX_INSTANCES": str(settings.FACESITE_MAX_INSTANCES),
        "FACESITE_INSTANCE_TYPE": settings.FACESITE_INSTANCE_TYPE,
        "FACESITE_INSTANCE_PROFILE": names.worker_profile,
        "FACESITE_SECURITY_GROUP": worker_group,
        "FACESITE_INPUT_RETENTION_DAYS": str(settings.FACESITE_INPUT_RETENTION_DAYS),
    }


def web_user_data(names: Names, public_ip: str, worker_group: str, key: str, sha256: str) -> str:
    units = {
        name: render_template(
            f"facesite-{name}.service", app_dir=APP_DIR, venv_dir=VENV_DIR, env_file=WEB_ENV_FILE
        )
        for name in ("migrate", "web", "scaler")
    }
    heredoc_start, env_lines, heredoc_end = render_boot_env_lines(
        web_environment(names, public_ip, worker_group), WEB_ENV_FILE
    )
    script = render_template(
        "web.sh",
        **install_values(names.region, names.gallery_bucket, key, sha256, "web.txt"),
        secret_key_parameter=secret_parameter(names, "django-secret-key"),
        admin_password_parameter=secret_parameter(names, "admin-password"),
        heredoc_start=heredoc_start,
        env_lines=env_lines,
        heredoc_end=heredoc_end,
        env_file=WEB_ENV_FILE,
        scaler_role_arn=role_arn(names, names.scaler_role),
        migrate_unit=units["migrate"],
        web_unit=units["web"],
        scaler_unit=units["scaler"],
        nginx_conf=render_template(
            "nginx-facesite.conf",
            client_max_body_size=f"{settings.FACESITE_MAX_UPLOAD_BYTES // (1024 * 1024) + 1}m",
            read_timeout=f"{int(settings.FACESITE_REPLY_TIMEOUT) + 30}s",
        ),
    )
    if len(script.encode()) > USER_DATA_LIMIT:
        raise DeployError(f"web-instance's user data is {len(script.encode())} bytes, over 16 KB")
    return script


def ensure_web_instance(
    names: Names,
    web_group: str,
    public_ip: str,
    built: BuildResult,
    commit: str,
    say: Say,
    poll: float,
) -> str:
    """The running (or starting) web-instance of `commit`: kept if there is one, launched if
    there is none, replaced if it runs another commit (its data is SQLite on its own volume:
    the replacement starts with an empty history and gallery database)."""
    ec2 = aws.client("ec2")
    existing = [
        i
        for r in ec2.describe_instances(
            Filters=[
                *names.tag_filters(Role.WEB),
                {"Name": "tag:Name", "Values": [WEB_INSTANCE_NAME]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )["Reservations"]
        for i in r["Instances"]
    ]
    if existing:
        instance = existing[0]
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if tags.get(COMMIT_TAG) == commit:
            if instance["State"]["Name"] == "stopped":
                ec2.start_instances(InstanceIds=[instance["InstanceId"]])
            say(f"{WEB_INSTANCE_NAME} exists ({instance['State']['Name']}): kept")
            return instance["InstanceId"]
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
        say(
            f"{WEB_INSTANCE_NAME} {instance['InstanceId']} runs commit "
            f"{tags.get(COMMIT_TAG, '?')[:12]}: terminated, replaced by one of {commit[:12]}"
        )
    if _local():
        base, user_data = current_image_id(), ""
    else:
        base = aws.client("ssm").get_parameter(Name=AL2023_PARAMETER)["Parameter"]["Value"]
        key, sha256 = upload_source(plan_build().source, names.gallery_bucket, say)
        user_data = web_user_data(names, public_ip, built.security_group_id, key, sha256)
    request: dict[str, Any] = {
        "ImageId": base,
        "InstanceType": WEB_INSTANCE_TYPE,
        "MinCount": 1,
        "MaxCount": 1,
        "IamInstanceProfile": {"Name": names.web_role},
        "SecurityGroupIds": [web_group],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"VolumeSize": WEB_ROOT_VOLUME_GB, "VolumeType": "gp3"},
            }
        ],
        "TagSpecifications": [
            {
                "ResourceType": "instance",
                "Tags": [
                    *names.tags(Role.WEB, WEB_INSTANCE_NAME),
                    {"Key": COMMIT_TAG, "Value": commit},
                ],
            },
            {"ResourceType": "volume", "Tags": names.tags(Role.WEB, WEB_INSTANCE_NAME)},
        ],
        # The same request twice (a retried deploy) launches one instance.
        "ClientToken": hashlib.sha256(
            json.dumps([names.prefix, base, user_data], sort_keys=True).encode()
        ).hexdigest()[:64],
    }
    if user_data:
        request["UserData"] = user_data
    return run_instance(request, say, retry_every=min(poll, 3.0))


# --- teardown -------------------------------------------------------------------------------------


@dataclass
class Tagged:
    """Everything of one prefix that teardown removes, by kind."""

    instances: list[tuple[str, str, str]] = field(default_factory=list)  # (id, name, state)
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (allocation id, ip)
    images: list[tuple[str, str]] = field(default_factory=list)  # (id, name)
    snapshots: list[str] = field(default_factory=list)
    security_groups: list[tuple[str, str]] = field(default_factory=list)  # (id, name)
    roles: list[str] = field(default_factory=list)
    instance_profiles: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)  # URLs
    buckets: list[str] = field(default_factory=list)

    def lines(self, delete_data: bool) -> list[str]:
        kept = "" if delete_data else " (kept: --delete-data removes them)"
        return [
            *(
                f"- instance {name or '(unnamed)'} {i} ({state})"
                for i, name, state in self.instances
            ),
            *(f"- Elastic IP {ip} ({a})" for a, ip in self.addresses),
            *(f"- AMI {name} {i}" for i, name in self.images),
            *(f"- snapshot {s}" for s in self.snapshots),
            *(f"- security group {name} {i}" for i, name in self.security_groups),
            *(f"- instance profile {p}" for p in self.instance_profiles),
            *(f"- IAM role {r} (with its policies)" for r in self.roles),
            *(f"- SSM parameter {p}" for p in self.parameters),
            *(f"- queue {q.rsplit('/', 1)[-1]}" for q in self.queues),
            *(f"- bucket {b} and every object version in it{kept}" for b in self.buckets),
        ]

    def empty(self) -> bool:
        return not any(
            (
                self.instances,
                self.addresses,
                self.images,
                self.snapshots,
                self.security_groups,
                self.roles,
                self.instance_profiles,
                self.parameters,
                self.queues,
                self.buckets,
            )
        )


def find_tagged(names: Names) -> Tagged:
    """Everything tagged with this prefix (terminated instances are gone already: skipped)."""
    prefix = names.prefix
    ours = [{"Name": f"tag:{PREFIX_TAG}", "Values": [prefix]}]
    ec2, iam, ssm = aws.client("ec2"), aws.client("iam"), aws.client("ssm")
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    found = Tagged()
    for page in ec2.get_paginator("describe_instances").paginate(Filters=ours):
        for reservation in page["Reservations"]:
            for i in reservation["Instances"]:
                if i["State"]["Name"] != "terminated":
                    tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                    found.instances.append(
                        (i["InstanceId"], tags.get("Name", ""), i["State"]["Name"])
                    )
    found.addresses = [
        (a["AllocationId"], a["PublicIp"])
        for a in ec2.describe_addresses(Filters=ours)["Addresses"]
    ]
    images = ec2.describe_images(Owners=["self"], Filters=ours)["Images"]
    found.images = [(i["ImageId"], i.get("Name", "")) for i in images]
    snapshots = {
        m["Ebs"]["SnapshotId"]
        for i in images
        for m in i.get("BlockDeviceMappings", [])
        if "SnapshotId" in m.get("Ebs", {})
    }
    snapshots |= {
        s["SnapshotId"]
        for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=ours)["Snapshots"]
    }
    found.snapshots = sorted(snapshots)
    found.security_groups = [
        (g["GroupId"], g["GroupName"])
        for g in ec2.describe_security_groups(Filters=ours)["SecurityGroups"]
    ]
    for role in role_names(names):
        try:
            tags = iam.list_role_tags(RoleName=role)["Tags"]
        except ClientError as error:
            if error.response["Error"]["Code"] == "NoSuchEntity":
                continue
            raise
        if {"Key": PREFIX_TAG, "Value": prefix} in tags:
            found.roles.append(role)
            profiles = iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]
            found.instance_profiles += [p["InstanceProfileName"] for p in profiles]
    parameters = ssm.get_parameters_by_path(Path=f"/{prefix}/", Recursive=True)["Parameters"]
    for parameter in parameters:
        tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=parameter["Name"])
        if {"Key": PREFIX_TAG, "Value": prefix} in tags["TagList"]:
            found.parameters.append(parameter["Name"])
    for url in sqs.list_queues(QueueNamePrefix=f"{prefix}-").get("QueueUrls", []):
        if sqs.list_queue_tags(QueueUrl=url).get("Tags", {}).get(PREFIX_TAG) == prefix:
            found.queues.append(url)
    for bucket in s3.list_buckets()["Buckets"]:
        if not bucket["Name"].startswith(f"{prefix}-"):
            continue
        try:
            tag_set = s3.get_bucket_tagging(Bucket=bucket["Name"])["TagSet"]
        except ClientError:
            continue  # untagged: not ours
        if {"Key": PREFIX_TAG, "Value": prefix} in tag_set:
            found.buckets.append(bucket["Name"])
    return found


def teardown(
    names: Names,
    found: Tagged,
    delete_data: bool,
    say: Say,
    poll: float = 5.0,
    timeout: float = 900.0,
) -> None:
    """Remove what `found` lists, in an order AWS accepts (instances before their security
    groups and addresses, profiles before roles)."""
    ec2, iam, ssm = aws.client("ec2"), aws.client("iam"), aws.client("ssm")
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    instance_ids = [i for i, _, _ in found.instances]
    if instance_ids:
        ec2.terminate_instances(InstanceIds=instance_ids)
        say(f"terminating {len(instance_ids)} instances")
        for instance in instance_ids:
            wait_for_instance(ec2, instance, State.TERMINATED, timeout, poll, say)
    for allocation, ip in found.addresses:
        address = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
        if address.get("AssociationId"):
            ec2.disassociate_address(AssociationId=address["AssociationId"])
        ec2.release_address(AllocationId=allocation)
        say(f"released {ip}")
    for image, name in found.images:
        ec2.deregister_image(ImageId=image)
        say(f"deregistered {name} {image}")
    for snapshot in found.snapshots:
        ec2.delete_snapshot(SnapshotId=snapshot)
        say(f"deleted snapshot {snapshot}")
    for group, name in found.security_groups:
        _retry_dependency(
            lambda group=group: ec2.delete_security_group(GroupId=group), poll, timeout
        )
        say(f"deleted security group {name}")
    for role in found.roles:
        for profile in iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=profile["InstanceProfileName"], RoleName=role
            )
            iam.delete_instance_profile(InstanceProfileName=profile["InstanceProfileName"])
            say(f"deleted instance profile {profile['InstanceProfileName']}")
        for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy)
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=role)
        say(f"deleted IAM role {role}")
    for parameter in found.parameters:
        ssm.delete_parameter(Name=parameter)
        say(f"deleted SSM parameter {parameter}")
    for url in found.queues:
        sqs.delete_queue(QueueUrl=url)
        say(f"deleted queue {url.rsplit('/', 1)[-1]}")
    if delete_data:
        for bucket in found.buckets:
            empty_bucket(bucket)
            s3.delete_bucket(Bucket=bucket)
            say(f"deleted bucket {bucket}")


def empty_bucket(bucket: str) -> None:
    """Delete every object version and delete marker (the input bucket is versioned)."""
    s3 = aws.client("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        doomed = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        ]
        for start in range(0, len(doomed), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[start : start + 1000]})


def _retry_dependency(call: Callable[[], Any], poll: float, timeout: float) -> None:
    """A security group stays "in use" for a while after its instances terminate."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
            return
        except ClientError as error:
            if error.response["Error"]["Code"] != "DependencyViolation":
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(poll)
