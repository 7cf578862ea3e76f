"""The EC2 and SQS side of the scaler: observe the app tier by its tags, read the request queue's
depth, and carry out the policy's actions.

Every call goes through the boto3 clients handed in (facesite.aws builds them with the project's
one retry policy), so the same driver talks to moto locally and to EC2 on AWS. Actions never
raise: each comes back as an Outcome (ok / failed / unknown) for the policy's next tick.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from facesite.aws import readers
from facesite.aws.names import (
    APP_TIER_NAME_PREFIX,
    CONFIG_TAG,
    IMAGE_TAG,
    LAUNCH_TOKEN_TAG,
    Names,
    Role,
    State,
    app_tier_number,
)
from scaler.policy import Action, ActionResult, Instance, Kind, Outcome

logger = logging.getLogger(__name__)

# How long the current image and configuration are trusted before looking again: a describe of
# images every tick would cost the emulator (and EC2's rate limit) for a change made by a rebuild.
BUILD_CHECK_SECONDS = 15.0

THROTTLING_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}
)


class NotSent(Exception):
    """The request never left this process: nothing can have happened."""


def classify(error: Exception) -> ActionResult:
    """FAILED when nothing can have happened (not sent, or a 4xx other than throttling), else
    UNKNOWN: a timeout or a 5xx may hide a success."""
    if isinstance(error, NotSent):
        return ActionResult.FAILED
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code not in THROTTLING_CODES and 400 <= status < 500:
            return ActionResult.FAILED
    return ActionResult.UNKNOWN


def config_digest(user_data: str) -> str:
    """The CONFIG_TAG value of instances launched with `user_data`."""
    return hashlib.sha256(user_data.encode()).hexdigest()[:16]


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
        max_workers: int = 8,
    ) -> None:
        self.ec2, self.sqs = ec2, sqs
        self.prefix, self.queue_url = prefix, queue_url
        self.names = Names(prefix, region="", account="")  # for the tags only
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
        self.max_workers = max_workers
        # Lists the instances every tick; reads each one's tags only when it first appears.
        self._instances = readers.ListedInstances(prefix, Role.APP_TIER)
        self._misnamed: set[str] = set()
        self._build: tuple[float, tuple[str, str] | None] | None = None  # (checked at, build)

    # --- observing ----------------------------------------------------------------------------

    def describe(self) -> tuple[Instance, ...]:
        """Every app-tier instance of this deployment (terminated ones while EC2 lists them);
        stopped ones launched from another image or configuration than the current ones marked
        stale."""
        records = self._instances.read(self.ec2)
        build = None
        if any(record.state == State.STOPPED for record in records):
            build = self.current_build()
        return tuple(
            instance for record in records if (instance := self._parse(record, build)) is not None
        )

    def current_build(self) -> tuple[str, str] | None:
        """(image id, config digest) new instances launch with; None when unknown (no image
        yet, or EC2 failed), which marks nothing stale."""
        now = time.monotonic()
        if self._build is None or now - self._build[0] >= BUILD_CHECK_SECONDS:
            try:
                build = (self.image_id(), config_digest(self.user_data()))
            except Exception as error:
                logger.info("current image unknown (%s): no instance counts as stale", error)
                build = None
            self._build = (now, build)
        return self._build[1]

    def _stale(self, record: readers.InstanceRecord, build: tuple[str, str] | None) -> bool:
        if build is None or record.state != State.STOPPED:
            return False
        return (record.tags.get(IMAGE_TAG), record.tags.get(CONFIG_TAG)) != build

    def _parse(
        self, record: readers.InstanceRecord, build: tuple[str, str] | None = None
    ) -> Instance | None:
        number = app_tier_number(record.name)
        if number is None:
            # Ours by tag but not named app-tier-instance-<n>: someone renamed it. Leave it be.
            if record.id not in self._misnamed:
                self._misnamed.add(record.id)
                logger.warning(
                    "ignoring %s: tagged as app tier but named %r", record.id, record.name
                )
            return None
        return Instance(
            id=record.id,
            number=number,
            state=record.state,
            launched_at=record.launched_at,
            stale=self._stale(record, build),
        )

    def queue_depth(self) -> tuple[int, int]:
        """(visible, in flight) on the request queue."""
        depth = readers.queue_depth(self.sqs, self.queue_url)
        return depth.visible, depth.in_flight

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
            return [Outcome(a, ActionResult.OK) for a in actions]
        except Exception as error:
            if len(actions) == 1 or classify(error) != ActionResult.FAILED:
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
        getattr(self.ec2, operation)(InstanceIds=instance_ids)

    def _launch_outcome(self, action: Action) -> list[Outcome]:
        try:
            instance_id = self.launch(action.name, action.generation, retry=action.retry)
        except Exception as error:
            return [Outcome(action, classify(error), describe_error(error))]
        return [Outcome(action, ActionResult.OK, instance_id)]

    def token(self, name: str, generation: int) -> str:
        """The run_instances ClientToken: the same for every retry of one launch, new otherwise."""
        return f"{name}-{self.session}-{generation}"

    def launch(self, name: str, generation: int, retry: bool = False) -> str:
        """Launch one instance called `name`; returns its id.

        EC2 honours the ClientToken itself; the token is also a tag, so a retry looks for an
        instance carrying it first (moto ignores ClientToken, and this also skips the call).
        """
        if not name.startswith(APP_TIER_NAME_PREFIX):
            raise ValueError(f"not an app-tier instance name: {name}")
        token = self.token(name, generation)
        if retry:
            token_filter = {"Name": f"tag:{LAUNCH_TOKEN_TAG}", "Values": [token]}
            for existing in readers.instances(
                self.ec2, self.prefix, Role.APP_TIER, extra_filters=[token_filter]
            ):
                return existing.id
        try:
            image_id, user_data = self.image_id(), self.user_data()
        except Exception as error:
            raise NotSent(f"no image or user data to launch with: {error}") from error
        tags = [
            *self.names.tags(Role.APP_TIER, name),
            {"Key": LAUNCH_TOKEN_TAG, "Value": token},
            {"Key": IMAGE_TAG, "Value": image_id},
            {"Key": CONFIG_TAG, "Value": config_digest(user_data)},
        ]
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
        response = self.ec2.run_instances(**params)
        return response["Instances"][0]["InstanceId"]
