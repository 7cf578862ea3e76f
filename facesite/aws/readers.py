"""Typed reads of this deployment's AWS state: queue depth, and instances by role and state.

Each takes the boto3 client to use, so the tiers pass `facesite.aws.client(...)` and the tests
pass clients of their own emulator; each returns plain data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError

from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Role, State


@dataclass(frozen=True)
class QueueDepth:
    """SQS's approximate counts: messages waiting, and messages received but not yet deleted."""

    visible: int
    in_flight: int

    @property
    def total(self) -> int:
        return self.visible + self.in_flight


def queue_depth(sqs: Any, queue_url: str) -> QueueDepth:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return QueueDepth(
        visible=int(attributes["ApproximateNumberOfMessages"]),
        in_flight=int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


@dataclass(frozen=True)
class InstanceRecord:
    """One EC2 instance as DescribeInstances shows it."""

    id: str
    name: str
    state: State
    launched_at: float | None  # epoch seconds
    tags: dict[str, str] = field(default_factory=dict)


def instances(
    ec2: Any,
    prefix: str,
    role: Role,
    states: Iterable[State] = (),
    extra_filters: Iterable[dict[str, Any]] = (),
) -> list[InstanceRecord]:
    """This deployment's instances of `role` (in `states`, if given), terminated ones included
    when no state is asked for."""
    filters: list[dict[str, Any]] = [
        {"Name": f"tag:{PREFIX_TAG}", "Values": [prefix]},
        {"Name": f"tag:{ROLE_TAG}", "Values": [str(role)]},
        *extra_filters,
    ]
    wanted = [str(state) for state in states]
    if wanted:
        filters.append({"Name": "instance-state-name", "Values": wanted})
    return _records(ec2.get_paginator("describe_instances").paginate(Filters=filters))


def _records(pages: Iterable[dict[str, Any]]) -> list[InstanceRecord]:
    """The instances of DescribeInstances' pages."""
    found = []
    for page in pages:
        for reservation in page["Reservations"]:
            for raw in reservation["Instances"]:
                tags = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
                launch_time = raw.get("LaunchTime")
                found.append(
                    InstanceRecord(
                        id=raw["InstanceId"],
                        name=tags.get("Name", ""),
                        state=State(raw["State"]["Name"]),
                        launched_at=launch_time.timestamp() if launch_time else None,
                        tags=tags,
                    )
                )
    return found


class RunningInstances:
    """This deployment's running instances of `role`, for a loop that asks several times a
    second (the local instance runner, the course benchmark).

    DescribeInstances answers with every attribute of every instance, and serialising that is
    most of its cost: with 15 instances the emulator spends about six times the CPU it spends
    on DescribeInstanceStatus, which names only the running instances. So each read lists the
    running instances with DescribeInstanceStatus, and reads an instance with DescribeInstances
    only the first time it is listed: what is kept of it (id, name, tags, launch time) does not
    change while it runs. An instance no longer listed is forgotten, and read again if it comes
    back. DescribeInstanceStatus cannot filter on tags, so other deployments' running instances
    are read once too, and kept as not ours.
    """

    def __init__(self, prefix: str, role: Role) -> None:
        self.prefix = prefix
        self.role = role
        self.seen: dict[str, InstanceRecord | None] = {}

    def read(self, ec2: Any) -> list[InstanceRecord]:
        running = [
            status["InstanceId"]
            for page in ec2.get_paginator("describe_instance_status").paginate(
                Filters=[{"Name": "instance-state-name", "Values": [str(State.RUNNING)]}]
            )
            for status in page["InstanceStatuses"]
        ]
        unseen = [instance_id for instance_id in running if instance_id not in self.seen]
        # Read by id, not by tag: an instance of another deployment is kept as None.
        found = {record.id: record for record in self._describe(ec2, unseen)} if unseen else {}
        seen = {}
        for instance_id in running:
            if instance_id in self.seen:
                seen[instance_id] = self.seen[instance_id]
            elif instance_id in found:
                seen[instance_id] = self._kept(found[instance_id])
            # Listed but not yet described (EC2 is eventually consistent): read again next time.
        self.seen = seen
        return [record for record in seen.values() if record is not None]

    def _kept(self, record: InstanceRecord) -> InstanceRecord | None:
        """A newly listed instance's record if it is ours, else None. It was listed as running:
        described a moment later, it may already show as stopping."""
        tags = record.tags
        if (tags.get(PREFIX_TAG), tags.get(ROLE_TAG)) != (self.prefix, str(self.role)):
            return None
        return replace(record, state=State.RUNNING)

    @staticmethod
    def _describe(ec2: Any, instance_ids: list[str]) -> list[InstanceRecord]:
        try:
            return _records(
                ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "InvalidInstanceID.NotFound":
                raise
            return []
