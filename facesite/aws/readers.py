"""Typed reads of this deployment's AWS state: queue depth, and instances by role and state.

Each takes the boto3 client to use, so the tiers pass `facesite.aws.client(...)` and the tests
pass clients of their own emulator; each returns plain data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
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
