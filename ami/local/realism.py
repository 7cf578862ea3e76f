"""AWS's timing and consistency for the local emulator (`FACESITE_EMULATOR_REALISM=aws`).

moto answers instantly and consistently: an instance is `running` the moment RunInstances
returns, `stopped` the moment StopInstances returns, SQS's approximate counts are exact, and a
role is usable the moment it exists. AWS is none of that (see the README's "On real AWS"), and
code written against moto alone breaks there. With `install()` the emulator process behaves as
AWS documents:

- a launched instance is absent from DescribeInstances for a moment (filters skip it, asking for
  it by id gives `InvalidInstanceID.NotFound`), then `pending` for seconds, then `running`;
- StopInstances goes through `stopping` (a `pending` instance cannot be stopped:
  `IncorrectInstanceState`); StartInstances of a stopped instance goes through `pending` (a
  `stopping` one cannot be started); TerminateInstances goes through `shutting-down`;
- SQS's `ApproximateNumberOfMessages[NotVisible]` report the queue as it was some seconds ago;
- a just-created instance profile is refused by RunInstances (`InvalidParameterValue`, as IAM
  propagation makes EC2 do) for some seconds;
- a share of EC2 calls is refused with `RequestLimitExceeded` (EC2's API throttling).

Every delay is an AWS-like default (`Delays`) times a scale factor (tests run AWS's timing a few
times faster), with +-30% jitter, as real delays vary. The module patches moto's classes in the
current process, so it is installed in the emulator's own process only (`ami/local/emulator.py`),
never in a test process that uses moto's in-process mock.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

logger = logging.getLogger(__name__)

JITTER = 0.3
# How often the SQS sampler records every queue's true counts: the resolution of the lag.
SQS_SAMPLE_INTERVAL = 0.1


@dataclass(frozen=True)
class Delays:
    """Seconds, at scale 1: what AWS typically shows (README, "On real AWS", has the sources)."""

    # A new instance id may be missing from DescribeInstances "for a short while".
    launch_hidden: float = 2.0
    # RunInstances to `running`: usually 10-20 s.
    launch_pending: float = 15.0
    # StartInstances of a stopped instance to `running`: its volume and image are ready.
    start_pending: float = 10.0
    # StopInstances to `stopped`: the OS shuts down (the worker gets its warm shutdown).
    stopping: float = 15.0
    # TerminateInstances to `terminated`.
    shutting_down: float = 10.0
    # A new instance profile is refused by RunInstances for "several seconds".
    profile_propagation: float = 8.0
    # SQS documents its approximate counts as eventually consistent (up to a minute after
    # producers stop); observed lags are usually seconds.
    sqs_count_lag: float = 20.0

    def scaled(self, factor: float) -> Delays:
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)})


@dataclass(frozen=True)
class Realism:
    delays: Delays
    throttle_rate: float  # share of EC2 calls answered with RequestLimitExceeded
    jitter: float = JITTER
    # Every random choice (jitter, which calls are throttled) comes from here: seeded, a run of
    # calls made one after another is answered the same way every time.
    rng: random.Random = field(default_factory=random.Random)

    def vary(self, seconds: float) -> float:
        return seconds * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def throttles(self) -> bool:
        """Whether to refuse this EC2 call."""
        return self.rng.random() < self.throttle_rate


def configured(
    time_scale: float,
    throttle_rate: float,
    sqs_count_lag: float | None = None,
    seed: int | None = None,
) -> Realism:
    """AWS's defaults scaled by `time_scale`; the SQS lag, when given, is also scaled. `seed`
    fixes the random choices (unset: different every run)."""
    delays = Delays()
    if sqs_count_lag is not None:
        delays = replace(delays, sqs_count_lag=sqs_count_lag)
    return Realism(
        delays=delays.scaled(time_scale), throttle_rate=throttle_rate, rng=random.Random(seed)
    )


# --- instances: a state that moves on by itself ---------------------------------------------------

# EC2's state codes.
CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}


class InstanceTimeline:
    """One instance's state, with transitions scheduled ahead: reading the state applies every
    transition that is due, so the state moves on without anyone calling the API (as on AWS).
    The clock is injected, so the sequence can be tested without waiting."""

    def __init__(self, state: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._state = state
        self._next: tuple[float, str] | None = None  # (due, state)
        self.visible_at = 0.0  # before this, describe does not show the instance

    @property
    def state(self) -> str:
        if self._next is not None and self.clock() >= self._next[0]:
            self._state, self._next = self._next[1], None
        return self._state

    def set(self, state: str, then: str | None = None, after: float = 0.0) -> None:
        """Be in `state` now, and in `then` `after` seconds from now."""
        self._state = state
        self._next = (self.clock() + after, then) if then is not None else None

    @property
    def visible(self) -> bool:
        return self.clock() >= self.visible_at


def _ec2_error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)


class _TimedState:
    """moto's InstanceState, backed by an InstanceTimeline: moto reads and writes
    `instance._state.name` / `.code`, and this keeps both in step with the timeline."""

    def __init__(self, timeline: InstanceTimeline) -> None:
        self._timeline = timeline

    @property
    def name(self) -> str:
        return self._timeline.state

    @name.setter
    def name(self, value: str) -> None:
        # moto's own start/stop/terminate write the final state; the patched methods below
        # replace that with the timed sequence right after.
        self._timeline.set(value)

    @property
    def code(self) -> int:
        return CODES[self._timeline.state]

    @code.setter
    def code(self, value: int) -> None:
        pass  # derived from the name

    def __copy__(self) -> Any:
        from moto.ec2.models.instances import InstanceState

        return InstanceState(self.name, self.code)


def _timeline(instance: Any) -> InstanceTimeline:
    timeline = instance.__dict__.get("_facesite_timeline")
    if timeline is None:
        timeline = InstanceTimeline("running")
        instance.__dict__["_facesite_timeline"] = timeline
    return timeline


def _install_instances(realism: Realism) -> None:
    from moto.ec2.models.instances import Instance, InstanceBackend

    delays = realism.delays
    state_property = property(
        lambda self: _TimedState(_timeline(self)),
        # moto's __init__ assigns InstanceState("running", 16): the timeline takes its name.
        lambda self, value: _timeline(self).set(value.name),
    )
    Instance._state = state_property

    original_start, original_stop = Instance.start, Instance.stop
    original_terminate = Instance.terminate

    def start(self: Any) -> Any:
        timeline = _timeline(self)
        current = timeline.state
        if current in ("stopping", "shutting-down", "terminated"):
            raise _ec2_error(
                "IncorrectInstanceState",
                f"The instance '{self.id}' is not in a state from which it can be started.",
            )
        # Read before moto's own start, which writes its final state over the timeline.
        upcoming = _upcoming(timeline)
        previous = original_start(self)
        if current == "stopped":
            timeline.set("pending", then="running", after=realism.vary(delays.start_pending))
        else:  # pending or running: nothing changes
            timeline.set(current, *upcoming)
        return previous

    def stop(self: Any) -> Any:
        timeline = _timeline(self)
        current = timeline.state
        if current == "pending":
            raise _ec2_error(
                "IncorrectInstanceState",
                f"This instance '{self.id}' is not in a state from which it can be stopped.",
            )
        if current in ("shutting-down", "terminated"):
            raise _ec2_error("IncorrectInstanceState", f"The instance '{self.id}' is not running.")
        upcoming = _upcoming(timeline)
        previous = original_stop(self)
        if current == "running":
            timeline.set("stopping", then="stopped", after=realism.vary(delays.stopping))
        else:  # stopping or stopped: already on the way
            timeline.set(current, *upcoming)
        return previous

    def terminate(self: Any) -> Any:
        timeline = _timeline(self)
        current = timeline.state
        upcoming = _upcoming(timeline)
        previous = original_terminate(self)
        if current == "terminated":
            timeline.set("terminated")
        elif current == "shutting-down":
            timeline.set(current, *upcoming)
        else:
            timeline.set(
                "shutting-down", then="terminated", after=realism.vary(delays.shutting_down)
            )
        return previous

    Instance.start, Instance.stop, Instance.terminate = start, stop, terminate

    original_run = InstanceBackend.run_instances
    profiles = _ProfileAges()

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("iam_instance_profile_name") or ""
        arn = kwargs.get("iam_instance_profile_arn") or ""
        profile = name or arn.rsplit("/", 1)[-1]
        if profile and profiles.age(profile) < delays.profile_propagation:
            given = name or arn
            parameter = "iamInstanceProfile.name" if name else "iamInstanceProfile.arn"
            raise _ec2_error(
                "InvalidParameterValue",
                f"Value ({given}) for parameter {parameter} is invalid. Invalid IAM Instance "
                "Profile name",
            )
        reservation = original_run(self, *args, **kwargs)
        for instance in reservation.instances:
            timeline = _timeline(instance)
            timeline.set("pending", then="running", after=realism.vary(delays.launch_pending))
            timeline.visible_at = timeline.clock() + realism.vary(delays.launch_hidden)
        return reservation

    InstanceBackend.run_instances = run_instances

    original_describe = InstanceBackend.describe_instances
    original_by_ids = InstanceBackend.get_reservations_by_instance_ids

    def describe_instances(self: Any, filters: Any = None) -> Any:
        return _without_hidden(original_describe(self, filters))

    def get_reservations_by_instance_ids(
        self: Any, instance_ids: list[str], filters: Any = None
    ) -> Any:
        reservations = original_by_ids(self, instance_ids, filters)
        for reservation in reservations:
            for instance in reservation.instances:
                if not _timeline(instance).visible:
                    from moto.ec2.exceptions import InvalidInstanceIdError

                    raise InvalidInstanceIdError(instance.id)
        return reservations

    InstanceBackend.describe_instances = describe_instances
    InstanceBackend.get_reservations_by_instance_ids = get_reservations_by_instance_ids
    profiles.install()


def _upcoming(timeline: InstanceTimeline) -> tuple[str | None, float]:
    """The transition `timeline` has scheduled (state, seconds from now), to keep it when a
    repeated call (a second stop of a stopping instance) re-sets the current state."""
    upcoming = timeline._next
    if upcoming is None:
        return None, 0.0
    return upcoming[1], max(0.0, upcoming[0] - timeline.clock())


def _without_hidden(reservations: list[Any]) -> list[Any]:
    shown = []
    for reservation in reservations:
        # moto hands out shallow copies of its reservations: a new list leaves its own intact.
        reservation.instances = [i for i in reservation.instances if _timeline(i).visible]
        if reservation.instances:
            shown.append(reservation)
    return shown


class _ProfileAges:
    """When each instance profile was created (or got its role), by name."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}

    def age(self, name: str) -> float:
        created = self.created.get(name)
        return float("inf") if created is None else time.monotonic() - created

    def install(self) -> None:
        from moto.iam.models import IAMBackend

        original_create = IAMBackend.create_instance_profile
        original_add = IAMBackend.add_role_to_instance_profile

        def create_instance_profile(backend: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            profile = original_create(backend, name, *args, **kwargs)
            self.created[name] = time.monotonic()
            return profile

        def add_role_to_instance_profile(backend: Any, profile_name: str, *args: Any) -> Any:
            result = original_add(backend, profile_name, *args)
            # A role added to a profile propagates like a new profile.
            self.created[profile_name] = time.monotonic()
            return result

        IAMBackend.create_instance_profile = create_instance_profile
        IAMBackend.add_role_to_instance_profile = add_role_to_instance_profile


# --- throttling -----------------------------------------------------------------------------------


def _install_throttling(realism: Realism) -> None:
    if realism.throttle_rate <= 0:
        return
    from moto.ec2.responses._base_response import EC2BaseResponse

    original = EC2BaseResponse.error_on_dryrun

    # Nearly every EC2 action calls error_on_dryrun first, inside moto's error handling: an
    # error raised here is answered as EC2 answers it.
    def error_on_dryrun(self: Any) -> None:
        if realism.throttles():
            raise _ec2_error("RequestLimitExceeded", "Request limit exceeded.")
        original(self)

    EC2BaseResponse.error_on_dryrun = error_on_dryrun


# --- SQS: approximate counts that lag -------------------------------------------------------------


class LaggedCounts:
    """A queue's true (visible, in flight) counts over time, answered `lag` seconds late."""

    def __init__(self, lag: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lag = lag
        self.clock = clock
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self.lock = threading.Lock()

    def record(self, visible: int, in_flight: int) -> None:
        now = self.clock()
        with self.lock:
            if self.samples and self.samples[-1][1:] == (visible, in_flight):
                return  # unchanged: the older sample already says it
            self.samples.append((now, visible, in_flight))

    def as_of_lag(self) -> tuple[int, int]:
        """The counts as they were `lag` seconds ago (0, 0 before the first sample)."""
        cutoff = self.clock() - self.lag
        with self.lock:
            # Keep one sample at or before the cutoff: it holds the answer.
            while len(self.samples) > 1 and self.samples[1][0] <= cutoff:
                self.samples.popleft()
            if not self.samples or self.samples[0][0] > cutoff:
                return 0, 0
            return self.samples[0][1], self.samples[0][2]


def _install_sqs(realism: Realism) -> None:
    from moto.sqs.models import Queue, sqs_backends

    true_visible = Queue.approximate_number_of_messages.fget
    true_in_flight = Queue.approximate_number_of_messages_not_visible.fget
    lag = realism.delays.sqs_count_lag

    def counts(queue: Any) -> LaggedCounts:
        lagged = queue.__dict__.get("_facesite_counts")
        if lagged is None:
            lagged = queue.__dict__.setdefault("_facesite_counts", LaggedCounts(lag))
        return lagged

    def sample(queue: Any) -> None:
        counts(queue).record(true_visible(queue), true_in_flight(queue))

    def lagged_visible(queue: Any) -> int:
        sample(queue)
        return counts(queue).as_of_lag()[0]

    def lagged_in_flight(queue: Any) -> int:
        sample(queue)
        return counts(queue).as_of_lag()[1]

    Queue.approximate_number_of_messages = property(lagged_visible)
    Queue.approximate_number_of_messages_not_visible = property(lagged_in_flight)

    def sampler() -> None:
        # The truth changes between reads (sends, receives, visibility timeouts): recorded
        # here, so a read answers what the queue held `lag` ago, not what it held at the last
        # read before that.
        while True:
            try:
                for regions in list(sqs_backends.values()):
                    for backend in list(regions.values()):
                        for queue in list(backend.queues.values()):
                            sample(queue)
            except Exception:  # a queue deleted mid-sample: the next round sees the new set
                logger.debug("SQS sampler round skipped", exc_info=True)
            time.sleep(SQS_SAMPLE_INTERVAL)

    threading.Thread(target=sampler, name="sqs-count-sampler", daemon=True).start()


def install(realism: Realism) -> None:
    """Make this process's moto behave with `realism`'s delays (see the module's docstring)."""
    _install_instances(realism)
    _install_throttling(realism)
    _install_sqs(realism)
    logger.warning(
        "emulator realism: aws (launch %.1f s hidden + %.1f s pending, start %.1f s, stop "
        "%.1f s, terminate %.1f s, profile propagation %.1f s, SQS counts %.1f s late, "
        "%.1f%% of EC2 calls throttled)",
        realism.delays.launch_hidden,
        realism.delays.launch_pending,
        realism.delays.start_pending,
        realism.delays.stopping,
        realism.delays.shutting_down,
        realism.delays.profile_propagation,
        realism.delays.sqs_count_lag,
        realism.throttle_rate * 100,
    )
