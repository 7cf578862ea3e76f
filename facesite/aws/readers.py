"""Typed reads of this deployment's AWS state: queue depth, and instances by role and state.

Each takes the boto3 client to use, so the tiers pass `facesite.aws.client(...)` and the tests
pass clients of their own emulator; each returns plain data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from facesite.aws.names import PREFIX_TAG, ROLE_TAG, Role, State

# EC2 takes at most this many values in one filter.
MAX_FILTER_VALUES = 200


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


class ListedInstances:
    """This deployment's instances of `role` (in `states`, or in every state), for loops that ask
    several times a second: the scaler, the local instance runner, the course benchmark.

    DescribeInstances answers with every attribute of every instance, and serialising that is
    most of its cost: with 15 instances the emulator spends about five times the CPU it spends on
    DescribeInstanceStatus, which lists only ids and states. So each read lists the instances
    with DescribeInstanceStatus, and reads an instance with DescribeInstances only the first
    time it is listed: what is kept of it (id, name, tags, launch time) does not change while it
    exists. Its state is the listing's. An instance no longer listed is forgotten, and read
    again if it comes back. DescribeInstanceStatus cannot filter on tags, so other deployments'
    instances are read once too, and kept as not ours. Every `refresh_seconds` all are read
    again, so a renamed or retagged instance is seen as it is now.
    """

    def __init__(
        self,
        prefix: str,
        role: Role,
        states: Iterable[State] = (),
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.role = role
        self.states = [str(state) for state in states]
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.seen: dict[str, InstanceRecord | None] = {}
        self._read_all_at = clock()

    def read(self, ec2: Any) -> list[InstanceRecord]:
        if self.clock() - self._read_all_at >= self.refresh_seconds:
            self.seen, self._read_all_at = {}, self.clock()
        listed = self._list(ec2)
        unseen = [instance_id for instance_id in listed if instance_id not in self.seen]
        found = {record.id: record for record in self._describe(ec2, unseen)} if unseen else {}
        seen = {}
        for instance_id in listed:
            if instance_id in self.seen:
                seen[instance_id] = self.seen[instance_id]
            elif instance_id in found:
                seen[instance_id] = self._kept(found[instance_id])
            # Listed but not yet described (EC2 is eventually consistent): read again next time.
        self.seen = seen
        return [
            replace(record, state=listed[instance_id])
            for instance_id, record in seen.items()
            if record is not None
        ]

    def _list(self, ec2: Any) -> dict[str, State]:
        """Instance id -> state, of every instance in the account and region (in `states`)."""
        filters = [{"Name": "instance-state-name", "Values": self.states}] if self.states else []
        pages = ec2.get_paginator("describe_instance_status").paginate(
            IncludeAllInstances=True, Filters=filters
        )
        return {
            status["InstanceId"]: State(status["InstanceState"]["Name"])
            for page in pages
            for status in page["InstanceStatuses"]
        }

    def _kept(self, record: InstanceRecord) -> InstanceRecord | None:
        """A newly listed instance's record if it is ours, else None."""
        tags = record.tags
        if (tags.get(PREFIX_TAG), tags.get(ROLE_TAG)) != (self.prefix, str(self.role)):
            return None
        return record

    @staticmethod
    def _describe(ec2: Any, instance_ids: list[str]) -> list[InstanceRecord]:
        # By a filter on the ids rather than by InstanceIds: one id EC2 does not know yet would
        # fail the whole call with InvalidInstanceID.NotFound; the filter leaves it out.
        paginator = ec2.get_paginator("describe_instances")
        records = []
        for start in range(0, len(instance_ids), MAX_FILTER_VALUES):
            by_ids = [
                {"Name": "instance-id", "Values": instance_ids[start : start + MAX_FILTER_VALUES]}
            ]
            records += _records(paginator.paginate(Filters=by_ids))
        return records
