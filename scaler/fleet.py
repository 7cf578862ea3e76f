"""The EC2 and SQS side of the scaler: observe the app tier by its tags, read the request queue's
depth, and carry out the policy's actions.

Every call goes through the boto3 clients handed in (facesite.aws builds them with botocore's
standard retry mode), so the same driver talks to moto locally and to EC2 on AWS. Actions never
raise: each comes back as an Outcome (ok / failed / unknown) for the policy's next tick.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from scaler.policy import (
    NAME_PREFIX,
    Action,
    Instance,
    Kind,
    Outcome,
    Result,
    State,
    instance_number,
)

logger = logging.getLogger(__name__)

PREFIX_TAG = "facesite:prefix"
ROLE_TAG = "facesite:role"
ROLE = "app-tier"
TOKEN_TAG = "facesite:launch-token"

THROTTLING_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}
)


class NotSent(Exception):
    """The request never left this process: nothing can have happened."""


def classify(error: Exception) -> Result:
    """FAILED when nothing can have happened (not sent, or a 4xx other than throttling), else
    UNKNOWN: a timeout or a 5xx may hide a success."""
    if isinstance(error, NotSent):
        return Result.FAILED
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code not in THROTTLING_CODES and 400 <= status < 500:
            return Result.FAILED
    return Result.UNKNOWN


def describe_error(error: Exception) -> str:
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return f"{detail.get('Code', 'error')}: {detail.get('Message', '')}".strip()
    return f"{type(error).__name__}: {error}"


class Fleet:
    """The app-tier instances of one deployment (one prefix) and its request queue."""

    def __init__(
        self,
        ec2: Any,
        sqs: Any,
        *,
        prefix: str,
        queue_url: str,
        image_id: Callable[[], str],
        user_data: Callable[[], str],
        instance_type: str,
        instance_profile: str = "",
        security_group: str = "",
        key_name: str = "",
        session: str = "",
        throttle_retries: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        max_workers: int = 8,
    ) -> None:
        self.ec2, self.sqs = ec2, sqs
        self.prefix, self.queue_url = prefix, queue_url
        # Called at launch time, not here: the AMI may be rebuilt while the scaler runs, and a
        # missing image must fail a launch, not the scaler.
        self.image_id, self.user_data = image_id, user_data
        self.instance_type = instance_type
        self.instance_profile = instance_profile
        self.security_group = security_group
        self.key_name = key_name
        # Part of every ClientToken: a new scaler process must not reuse an old process's tokens,
        # or EC2 would answer a fresh launch with a long-terminated instance.
        self.session = session or uuid.uuid4().hex[:12]
        self.throttle_retries = throttle_retries
        self.sleep = sleep
        self.max_workers = max_workers
        self._misnamed: set[str] = set()

    # --- observing ----------------------------------------------------------------------------

    def tag_filters(self) -> list[dict[str, Any]]:
        return [
            {"Name": f"tag:{PREFIX_TAG}", "Values": [self.prefix]},
            {"Name": f"tag:{ROLE_TAG}", "Values": [ROLE]},
        ]

    def describe(self) -> tuple[Instance, ...]:
        """Every app-tier instance of this deployment, terminated ones included."""
        return tuple(self._instances(self.tag_filters()))

    def _instances(self, filters: list[dict[str, Any]]) -> Iterable[Instance]:
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for raw in reservation["Instances"]:
                    instance = self._parse(raw)
                    if instance is not None:
                        yield instance

    def _parse(self, raw: dict[str, Any]) -> Instance | None:
        tags = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
        number = instance_number(tags.get("Name", ""))
        if number is None:
            # Ours by tag but not named app-tier-instance-<n>: someone renamed it. Leave it be.
            if raw["InstanceId"] not in self._misnamed:
                self._misnamed.add(raw["InstanceId"])
                logger.warning(
                    "ignoring %s: tagged as app tier but named %r",
                    raw["InstanceId"],
                    tags.get("Name"),
                )
            return None
        launch_time = raw.get("LaunchTime")
        return Instance(
            id=raw["InstanceId"],
            number=number,
            state=State(raw["State"]["Name"]),
            launched_at=launch_time.timestamp() if launch_time else None,
        )

    def queue_depth(self) -> tuple[int, int]:
        """(visible, in flight) on the request queue."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes["ApproximateNumberOfMessages"]),
            int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        )

    # --- acting -------------------------------------------------------------------------------

    def apply(self, actions: Sequence[Action]) -> tuple[Outcome, ...]:
        """Carry out one tick's actions concurrently: one batch call per kind, one call per launch
        (each launch has its own name and token). Outcomes come back in the actions' order."""
        if not actions:
            return ()
        batches = {
            kind: [a for a in actions if a.kind == kind]
            for kind in (Kind.START, Kind.STOP, Kind.TERMINATE)
        }
        launches = [a for a in actions if a.kind == Kind.LAUNCH]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(self._batch, kind, batch) for kind, batch in batches.items()]
            futures += [pool.submit(self._launch_outcome, action) for action in launches]
            outcomes = [outcome for future in futures for outcome in future.result()]
        return tuple(sorted(outcomes, key=lambda outcome: actions.index(outcome.action)))

    def _batch(self, kind: Kind, actions: list[Action]) -> list[Outcome]:
        if not actions:
            return []
        ids = [a.instance_id for a in actions]
        try:
            self.change_state(kind, ids)
            return [Outcome(a, Result.OK) for a in actions]
        except Exception as error:
            if len(actions) == 1 or classify(error) != Result.FAILED:
                return [Outcome(a, classify(error), describe_error(error)) for a in actions]
            # EC2 refuses a whole batch for one instance in the wrong state (say, one whose
            # worker just stopped it): do the rest one by one.
            logger.info("%s of %d refused (%s); retrying one by one", kind, len(ids), error)
            return [outcome for action in actions for outcome in self._batch(kind, [action])]

    def change_state(self, kind: Kind, instance_ids: list[str | None]) -> None:
        operation = {
            Kind.START: "start_instances",
            Kind.STOP: "stop_instances",
            Kind.TERMINATE: "terminate_instances",
        }[kind]
        self._call(getattr(self.ec2, operation), InstanceIds=instance_ids)

    def _launch_outcome(self, action: Action) -> list[Outcome]:
        try:
            instance_id = self.launch(action.name, action.generation, retry=action.retry)
        except Exception as error:
            return [Outcome(action, classify(error), describe_error(error))]
        return [Outcome(action, Result.OK, instance_id)]

    def token(self, name: str, generation: int) -> str:
        """The run_instances ClientToken: the same for every retry of one launch, new otherwise."""
        return f"{name}-{self.session}-{generation}"

    def launch(self, name: str, generation: int, retry: bool = False) -> str:
        """Launch one instance called `name`; returns its id.

        EC2 honours the ClientToken itself; the token is also a tag, so a retry looks for an
        instance carrying it first (moto ignores ClientToken, and this also skips the call).
        """
        if not name.startswith(NAME_PREFIX):
            raise ValueError(f"not an app-tier instance name: {name}")
        token = self.token(name, generation)
        if retry:
            token_filter = {"Name": f"tag:{TOKEN_TAG}", "Values": [token]}
            for existing in self._instances([*self.tag_filters(), token_filter]):
                return existing.id
        tags = [
            {"Key": "Name", "Value": name},
            {"Key": PREFIX_TAG, "Value": self.prefix},
            {"Key": ROLE_TAG, "Value": ROLE},
            {"Key": TOKEN_TAG, "Value": token},
        ]
        try:
            image_id, user_data = self.image_id(), self.user_data()
        except Exception as error:
            raise NotSent(f"no image or user data to launch with: {error}") from error
        params: dict[str, Any] = {
            "ImageId": image_id,
            "InstanceType": self.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": token,
            "UserData": user_data,
            # A worker that shuts its OS down stops the instance, keeping it in the warm pool.
            "InstanceInitiatedShutdownBehavior": "stop",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags[:3]},
            ],
        }
        if self.instance_profile:
            params["IamInstanceProfile"] = {"Name": self.instance_profile}
        if self.security_group:
            params["SecurityGroupIds"] = [self.security_group]
        if self.key_name:
            params["KeyName"] = self.key_name
        response = self._call(self.ec2.run_instances, **params)
        return response["Instances"][0]["InstanceId"]

    def _call(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        """botocore already retries throttling (standard mode); when EC2 keeps throttling the
        account's mutating calls, back off a little more (with jitter) before giving up."""
        attempt = 0
        while True:
            try:
                return call(**kwargs)
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code not in THROTTLING_CODES or attempt >= self.throttle_retries:
                    raise
            self.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))
            attempt += 1
