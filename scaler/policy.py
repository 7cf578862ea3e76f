"""The scaling policy: a pure function from what the scaler sees to what it should do.

No I/O, no Django, no boto3. The loop (scaler/loop.py) observes EC2 and SQS, calls `decide()`,
and applies the returned actions through the fleet driver (scaler/fleet.py). Time only enters
through `Observation.now`, and everything remembered between ticks leaves and comes back through
`PolicyMemory`, so every rule can be unit-tested tick by tick.

Rules, in the order `decide()` applies them:

0. Launches that got no answer last time are re-issued under the same generation (see Failures).
1. Stuck: an instance running for `stuck_after` (since the scaler first saw it running) that has
   shown no work for `stuck_after`, while messages have been waiting for `stuck_after`, is
   stopped; it comes back through an ordinary start (on AWS a stop/start reboots its worker).
2. Over the cap (the fleet was changed behind our back, or the cap was lowered): running
   instances beyond `max_instances` are stopped, stopped ones beyond it terminated.
3. Scale out, every tick while there is work: desired = min(max, ceil((visible + in_flight) /
   per_instance)). Pending, running and launches not yet visible count as active. The shortfall
   is met by starting stopped instances first; instances still stopping are waited for; only the
   rest is launched, under the lowest free `app-tier-instance-<n>` numbers, and never beyond
   `max_instances` instances in total (any state but terminated).
Work is what the request history says is outstanding (requests not yet final), when the loop
can read it, else SQS's visible + in-flight counts. SQS documents those counts as approximate
and eventually consistent (they can read 0 while messages wait, and stay non-zero for up to a
minute after the queue empties), so while the history is readable the counts only add work they
have shown, above the history's, for `count_lag` seconds: messages no request row accounts for
(a redelivered duplicate, say) still get a worker, and a stale count never holds the fleet up.

4. Scale in, only once there has been no work for `settle_seconds`: every
   running instance is stopped (pending ones on the tick they turn running: EC2 cannot stop a
   pending instance). While there is work nothing that may hold work is stopped, so there is no
   partial scale-in and no flapping; idle workers stop themselves, this is the backstop.
5. Warm pool, also only when settled: instances are launched until `warm_pool` exist; rule 4 stops
   each one as soon as it runs, so "prepare" needs no action of its own. Stopped instances beyond
   the pool are terminated.
6. Refresh, every tick: stopped instances the driver marks stale (launched from an older image or
   with another configuration) are terminated, never started; rules 3 and 5 launch their
   replacements from the current image.

Failures: the loop hands back the outcome of the previous tick's actions. A launch whose outcome
is unknown keeps its reservation and is re-issued with the same generation (the driver turns name,
session and generation into the EC2 ClientToken, so the retry cannot launch twice); a launch that
definitely failed frees its number. A kind of action that fails on consecutive ticks backs off
exponentially. With empty memory (a restart) every timer starts at the first tick, so there is no
scale-in before `settle_seconds` and no stuck verdict before `stuck_after`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from facesite.aws.names import State, app_tier_name


class Kind(StrEnum):
    START = "start"
    LAUNCH = "launch"
    STOP = "stop"
    TERMINATE = "terminate"


class ActionResult(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the API refused: nothing happened
    UNKNOWN = "unknown"  # no answer (timeout, 5xx, throttled out): it may or may not have happened


def _frozen(mapping: Mapping[Any, Any] | None = None) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Instance:
    id: str
    number: int
    state: State
    launched_at: float | None = None
    # Launched from another image or configuration than the current ones (the driver decides).
    stale: bool = False

    @property
    def name(self) -> str:
        return app_tier_name(self.number)


@dataclass(frozen=True)
class Action:
    kind: Kind
    name: str
    reason: str
    instance_id: str | None = None  # None for a launch: the instance does not exist yet
    # Launches only: with the driver's session id, `generation` makes the EC2 ClientToken, and
    # `retry` says an earlier attempt with this token may have succeeded.
    generation: int = 0
    retry: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one action when the loop applied it."""

    action: Action
    result: ActionResult
    detail: str = ""  # the error; for a successful launch, the new instance's id


@dataclass(frozen=True)
class Observation:
    now: float  # seconds, the same clock as launched_at and last_work_at
    # None when that part could not be read this tick.
    visible: int | None
    in_flight: int | None
    instances: tuple[Instance, ...] | None
    # Instance id -> the last time a request was seen on it (from the request history); None
    # when the history could not be read, which suspends stuck verdicts rather than making
    # every instance look idle.
    last_work_at: Mapping[str, float] | None = field(default_factory=_frozen)
    outcomes: tuple[Outcome, ...] = ()  # of the previous tick's actions
    # Requests the history knows are not final (exact, unlike SQS's counts); None when the
    # history could not be read, which leaves the decision to SQS's counts alone.
    outstanding: int | None = None


@dataclass(frozen=True)
class PolicyConfig:
    max_instances: int = 15
    requests_per_instance: int = 1
    warm_pool: int = 15
    settle_seconds: float = 1.0
    stuck_after: float = 120.0
    # A launch not visible after this long is forgotten (its number freed); EC2's describe
    # catches up within seconds, so this only matters when the launch never happened.
    launch_timeout: float = 120.0
    # How long SQS's counts may show more work than the history before they are believed.
    count_lag: float = 60.0
    retry_base: float = 1.0
    retry_cap: float = 30.0

    def __post_init__(self) -> None:
        if self.max_instances < 1 or self.requests_per_instance < 1 or self.warm_pool < 0:
            raise ValueError(f"invalid scaler configuration: {self}")


@dataclass(frozen=True)
class Launching:
    """A launch issued but not yet seen in describe: it holds its number and counts as active."""

    number: int
    generation: int
    issued_at: float
    uncertain: bool = False  # the last attempt got no answer: re-issue with the same token


@dataclass(frozen=True)
class PolicyMemory:
    empty_since: float | None = None  # since when visible + in_flight == 0
    waiting_since: float | None = None  # since when visible > 0
    sqs_ahead_since: float | None = None  # since when SQS has counted more than the history
    running_since: Mapping[str, float] = field(default_factory=_frozen)  # first seen running
    launching: Mapping[str, Launching] = field(default_factory=_frozen)  # by instance name
    next_generation: int = 1
    failures: Mapping[Kind, int] = field(default_factory=_frozen)  # consecutive failing ticks
    retry_at: Mapping[Kind, float] = field(default_factory=_frozen)


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    memory: PolicyMemory
    desired: int | None = None  # None when the queue could not be read

    def of(self, kind: Kind) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == kind)

    @property
    def starts(self) -> tuple[str, ...]:
        return tuple(a.instance_id or "" for a in self.of(Kind.START))

    @property
    def launches(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.of(Kind.LAUNCH))

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(a.instance_id or "" for a in self.of(Kind.STOP))

    @property
    def terminates(self) -> tuple[str, ...]:
        return tuple(a.instance_id or "" for a in self.of(Kind.TERMINATE))


def decide(observation: Observation, config: PolicyConfig, memory: PolicyMemory) -> Decision:
    obs, now = observation, observation.now
    failures, retry_at, launching = _fold_outcomes(obs.outcomes, now, config, memory)

    if obs.instances is None:
        # Blind to the fleet: act on nothing. The queue timers restart so that no scale-in or
        # stuck verdict rests on a tick we could not see.
        return Decision(
            (),
            PolicyMemory(
                running_since=memory.running_since,
                launching=_frozen(launching),
                next_generation=memory.next_generation,
                failures=_frozen(failures),
                retry_at=_frozen(retry_at),
            ),
        )

    live = [i for i in obs.instances if i.state != State.TERMINATED]
    seen = {i.name for i in live}
    launching = {
        name: launch
        for name, launch in launching.items()
        if name not in seen and now - launch.issued_at < config.launch_timeout
    }
    running_since = {
        i.id: memory.running_since.get(i.id, now) for i in live if i.state == State.RUNNING
    }

    queue_known = obs.visible is not None and obs.in_flight is not None
    visible, in_flight = obs.visible or 0, obs.in_flight or 0
    work, sqs_ahead_since = _work(obs, config, memory)
    work_known = queue_known or obs.outstanding is not None
    empty_since = waiting_since = None
    if work_known and work == 0:
        empty_since = memory.empty_since if memory.empty_since is not None else now
    if queue_known and visible > 0:
        waiting_since = memory.waiting_since if memory.waiting_since is not None else now

    plan = _Plan(config, now, live, launching, memory.next_generation, retry_at)

    # Launches whose answer never came are re-issued under the same token whatever the demand:
    # if they did happen this is a no-op, and if not their reservation has been counted anyway.
    for name, launch in sorted(launching.items()):
        if launch.uncertain:
            plan.relaunch(name, launch)

    desired = None
    if work_known:
        desired = min(config.max_instances, math.ceil(work / config.requests_per_instance))
        summary = (
            f"{visible} visible + {in_flight} in flight"
            if obs.outstanding is None
            else f"{obs.outstanding} outstanding ({visible} visible + {in_flight} in flight)"
        )
        waited = waiting_since is not None and now - waiting_since >= config.stuck_after
        if waited and obs.last_work_at is not None:
            plan.stop_stuck(running_since, obs.last_work_at)
        plan.enforce_cap()
        plan.retire_stale()
        if work > 0:
            plan.scale_out(desired, summary)
        elif empty_since is not None and now - empty_since >= config.settle_seconds:
            idle_for = now - empty_since
            what = "queue empty" if obs.outstanding is None else "no outstanding request"
            plan.scale_in(f"{what} for {idle_for:.1f}s (settle {config.settle_seconds:g}s)")

    return Decision(
        tuple(plan.actions),
        PolicyMemory(
            empty_since=empty_since,
            waiting_since=waiting_since,
            sqs_ahead_since=sqs_ahead_since,
            running_since=_frozen(running_since),
            launching=_frozen(plan.launching),
            next_generation=plan.next_generation,
            failures=_frozen(failures),
            retry_at=_frozen(retry_at),
        ),
        desired,
    )


def _work(obs: Observation, config: PolicyConfig, memory: PolicyMemory) -> tuple[int, float | None]:
    """The work to size the fleet for, and since when SQS has counted more than the history."""
    counted = (obs.visible or 0) + (obs.in_flight or 0)
    queue_known = obs.visible is not None and obs.in_flight is not None
    if obs.outstanding is None:
        return counted, None
    if not queue_known or counted <= obs.outstanding:
        return obs.outstanding, None
    ahead_since = memory.sqs_ahead_since if memory.sqs_ahead_since is not None else obs.now
    if obs.now - ahead_since >= config.count_lag:
        return counted, ahead_since
    return obs.outstanding, ahead_since


def _fold_outcomes(
    outcomes: Iterable[Outcome], now: float, config: PolicyConfig, memory: PolicyMemory
) -> tuple[dict[Kind, int], dict[Kind, float], dict[str, Launching]]:
    """Learn from the previous tick: free failed launches, mark unanswered ones, back off."""
    failures = dict(memory.failures)
    retry_at = dict(memory.retry_at)
    launching = dict(memory.launching)
    failed_kinds: set[Kind] = set()
    ok_kinds: set[Kind] = set()
    for outcome in outcomes:
        kind = outcome.action.kind
        (ok_kinds if outcome.result == ActionResult.OK else failed_kinds).add(kind)
        launch = launching.get(outcome.action.name) if kind == Kind.LAUNCH else None
        if launch is None:
            continue
        if outcome.result == ActionResult.FAILED:
            del launching[outcome.action.name]
        else:
            launching[outcome.action.name] = Launching(
                launch.number,
                launch.generation,
                launch.issued_at,
                uncertain=outcome.result == ActionResult.UNKNOWN,
            )
    for kind in failed_kinds:
        # One failing tick is often a race (an instance changed state under us): retry on the
        # next tick; from the second one on, back off exponentially.
        failures[kind] = failures.get(kind, 0) + 1
        streak = failures[kind]
        delay = 0.0 if streak == 1 else min(config.retry_cap, config.retry_base * 2 ** (streak - 2))
        retry_at[kind] = now + delay
    for kind in ok_kinds - failed_kinds:
        failures.pop(kind, None)
        retry_at.pop(kind, None)
    return failures, retry_at, launching


class _Plan:
    """The actions of one tick, built rule by rule; each rule sees what earlier rules chose."""

    def __init__(
        self,
        config: PolicyConfig,
        now: float,
        live: list[Instance],
        launching: dict[str, Launching],
        next_generation: int,
        retry_at: Mapping[Kind, float],
    ) -> None:
        self.config = config
        self.now = now
        self.live = sorted(live, key=lambda i: (i.number, i.id))
        self.launching = dict(launching)
        self.next_generation = next_generation
        self.retry_at = retry_at
        self.actions: list[Action] = []
        self.touched: set[str] = set()  # instance ids already given an action this tick

    def allowed(self, kind: Kind) -> bool:
        return self.now >= self.retry_at.get(kind, self.now)

    def in_state(self, *states: State) -> list[Instance]:
        return [i for i in self.live if i.state in states and i.id not in self.touched]

    def act(self, kind: Kind, instance: Instance, reason: str) -> None:
        self.touched.add(instance.id)
        self.actions.append(Action(kind, instance.name, reason, instance_id=instance.id))

    def active_count(self) -> int:
        """Pending, running (not being stopped this tick) and launches not yet visible."""
        return len(self.in_state(State.PENDING, State.RUNNING)) + len(self.launching)

    def of(self, kind: Kind) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]

    def total_count(self) -> int:
        """Every instance that holds a number: all but terminated (and those we terminate)."""
        terminating = {a.instance_id for a in self.of(Kind.TERMINATE)}
        return len([i for i in self.live if i.id not in terminating]) + len(self.launching)

    def free_numbers(self) -> list[int]:
        taken = {i.number for i in self.live} | {x.number for x in self.launching.values()}
        return [n for n in range(1, self.config.max_instances + 1) if n not in taken]

    def relaunch(self, name: str, launch: Launching) -> None:
        if not self.allowed(Kind.LAUNCH):
            return
        self.launching[name] = Launching(launch.number, launch.generation, launch.issued_at)
        self.actions.append(
            Action(
                Kind.LAUNCH,
                name,
                "retrying a launch that got no answer, under the same client token",
                generation=launch.generation,
                retry=True,
            )
        )

    def launch(self, count: int, reason: str) -> None:
        if count <= 0 or not self.allowed(Kind.LAUNCH):
            return
        room = self.config.max_instances - self.total_count()
        for number in self.free_numbers()[: min(count, room)]:
            name = app_tier_name(number)
            self.launching[name] = Launching(number, self.next_generation, self.now)
            self.actions.append(Action(Kind.LAUNCH, name, reason, generation=self.next_generation))
            self.next_generation += 1

    def stop_stuck(
        self, running_since: Mapping[str, float], last_work_at: Mapping[str, float]
    ) -> None:
        limit = self.config.stuck_after
        if not self.allowed(Kind.STOP):
            return
        for instance in self.in_state(State.RUNNING):
            if self.now - running_since.get(instance.id, self.now) < limit:
                continue
            last = last_work_at.get(instance.id)
            if last is not None and self.now - last < limit:
                continue
            idle = "never" if last is None else f"{self.now - last:.0f}s ago"
            self.act(
                Kind.STOP,
                instance,
                f"stuck: running for {limit:g}s+ while work waits, last work {idle}",
            )

    def enforce_cap(self) -> None:
        cap = self.config.max_instances
        excess = self.active_count() - cap
        if excess > 0 and self.allowed(Kind.STOP):
            for instance in self.in_state(State.RUNNING)[::-1][:excess]:
                self.act(Kind.STOP, instance, f"over the cap: more than {cap} active")
        excess = self.total_count() - cap
        if excess > 0 and self.allowed(Kind.TERMINATE):
            for instance in self.in_state(State.STOPPED)[::-1][:excess]:
                self.act(Kind.TERMINATE, instance, f"over the cap: more than {cap} instances")

    def retire_stale(self) -> None:
        """Stopped instances of an older image or configuration are terminated: starting one
        would serve with the old build. Their replacements are launched by the warm-pool rule
        (or by scale-out, when there is work); running ones are left to finish and stop."""
        if not self.allowed(Kind.TERMINATE):
            return
        for instance in self.in_state(State.STOPPED):
            if instance.stale:
                self.act(Kind.TERMINATE, instance, "stale: an older image or configuration")

    def scale_out(self, desired: int, summary: str) -> None:
        need = desired - self.active_count()
        if need <= 0:
            return
        reason = f"{summary}: want {desired} active, have {desired - need}"
        stopped = self.in_state(State.STOPPED)
        if self.allowed(Kind.START):
            for instance in stopped[:need]:
                self.act(Kind.START, instance, reason)
        # Stopped instances we may not start yet (backing off) and instances on their way to
        # stopped (stopping, or stopped by a rule above) are startable shortly: wait for them
        # rather than launch extra ones.
        need -= min(need, len(stopped))
        returning = [i for i in self.live if i.state == State.STOPPING]
        need -= min(need, len(returning) + len(self.of(Kind.STOP)))
        self.launch(need, reason)

    def scale_in(self, reason: str) -> None:
        if self.allowed(Kind.STOP):
            for instance in self.in_state(State.RUNNING):
                self.act(Kind.STOP, instance, reason)
        # Everything alive ends up stopped once settled, so it all counts towards the pool.
        pool = self.config.warm_pool
        settling = [i for i in self.live if i.state != State.SHUTTING_DOWN]
        self.launch(
            pool - len(settling) - len(self.launching),
            f"warm pool: keep {pool} stopped instances ready",
        )
        excess = len(self.in_state(State.STOPPED)) - pool
        if excess > 0 and self.allowed(Kind.TERMINATE):
            for instance in self.in_state(State.STOPPED)[::-1][:excess]:
                self.act(Kind.TERMINATE, instance, f"beyond the warm pool of {pool}")
