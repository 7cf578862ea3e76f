"""The scaling policy, tick by tick, without AWS: decide() is a pure function."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest

from facesite.aws.names import State, app_tier_name, app_tier_number
from scaler.policy import (
    Action,
    ActionResult,
    Decision,
    Instance,
    Kind,
    Observation,
    Outcome,
    PolicyConfig,
    PolicyMemory,
    decide,
)

CONFIG = PolicyConfig(
    max_instances=15, requests_per_instance=1, warm_pool=0, settle_seconds=1.0, stuck_after=30.0
)


def fleet(spec: str, first: int = 1) -> tuple[Instance, ...]:
    """'rrs-' -> instances first, first+1, ... running, running, stopped, stopping.

    Letters: p pending, r running, - stopping, s stopped, x shutting-down, t terminated."""
    states = {
        "p": State.PENDING,
        "r": State.RUNNING,
        "-": State.STOPPING,
        "s": State.STOPPED,
        "x": State.SHUTTING_DOWN,
        "t": State.TERMINATED,
    }
    return tuple(Instance(f"i-{first + k:03d}", first + k, states[c]) for k, c in enumerate(spec))


def observe(now, visible=0, in_flight=0, instances=(), **kw) -> Observation:
    return Observation(now, visible, in_flight, tuple(instances), **kw)


def run(config, memory, *observations) -> Decision:
    """Feed observations one tick after another; return the last decision."""
    decision = Decision((), memory or PolicyMemory())
    for obs in observations:
        decision = decide(obs, config, decision.memory)
    return decision


# --- names ------------------------------------------------------------------------------------


def test_names_round_trip():
    assert app_tier_name(7) == "app-tier-instance-7"
    assert app_tier_number("app-tier-instance-12") == 12
    for bad in (
        "app-tier-instance-",
        "app-tier-instance-0",
        "app-tier-instance-1x",
        "web-instance",
    ):
        assert app_tier_number(bad) is None


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        PolicyConfig(max_instances=0)


# --- scale out --------------------------------------------------------------------------------


def test_burst_starts_stopped_instances_before_launching():
    d = decide(observe(0, visible=100, instances=fleet("sssss")), CONFIG, PolicyMemory())
    assert d.starts == tuple(f"i-{n:03d}" for n in range(1, 6))
    assert d.launches == tuple(app_tier_name(n) for n in range(6, 16))
    assert not d.stops and not d.terminates
    assert d.desired == 15


def test_burst_from_a_full_warm_pool_only_starts():
    d = decide(observe(0, visible=100, instances=fleet("s" * 15)), CONFIG, PolicyMemory())
    assert len(d.starts) == 15 and not d.launches


def test_burst_from_nothing_launches_exactly_max_with_distinct_generations():
    d = decide(observe(0, visible=100), CONFIG, PolicyMemory())
    assert d.launches == tuple(app_tier_name(n) for n in range(1, 16))
    assert len({a.generation for a in d.of(Kind.LAUNCH)}) == 15
    # The launches count as active until describe shows them: the next tick adds nothing.
    again = decide(observe(0.25, visible=100), CONFIG, d.memory)
    assert again.actions == ()


def test_desired_is_ceil_of_work_over_per_instance_and_counts_in_flight():
    config = PolicyConfig(max_instances=15, requests_per_instance=4, warm_pool=0)
    d = decide(
        observe(0, visible=5, in_flight=4, instances=fleet("s" * 10)), config, PolicyMemory()
    )
    assert len(d.starts) == 3 and d.desired == 3


def test_only_the_shortfall_is_started():
    d = decide(
        observe(0, visible=3, in_flight=2, instances=fleet("rr" + "s" * 8)), CONFIG, PolicyMemory()
    )
    assert d.starts == ("i-003", "i-004", "i-005")


def test_never_beyond_max_active():
    d = decide(observe(0, visible=500, instances=fleet("r" * 10 + "p" * 5)), CONFIG, PolicyMemory())
    assert d.actions == ()


def test_never_beyond_max_instances_in_total():
    # 5 active, 10 stopping (not startable yet): the shortfall waits, nothing is launched.
    d = decide(observe(0, visible=100, instances=fleet("rrrrr" + "-" * 10)), CONFIG, PolicyMemory())
    assert d.actions == ()


def test_stopping_instances_are_waited_for_not_replaced():
    d = decide(observe(0, visible=3, instances=fleet("---")), CONFIG, PolicyMemory())
    assert d.actions == ()
    # More work than stopping instances: only the difference is launched.
    d = decide(observe(0, visible=5, instances=fleet("---")), CONFIG, PolicyMemory())
    assert d.launches == ("app-tier-instance-4", "app-tier-instance-5")


def test_launch_reuses_lowest_free_numbers():
    instances = fleet("r", 1) + fleet("t", 2) + fleet("r", 3) + fleet("x", 5)
    d = decide(observe(0, visible=5, instances=instances), CONFIG, PolicyMemory())
    assert d.launches == ("app-tier-instance-2", "app-tier-instance-4", "app-tier-instance-6")


def test_shutting_down_instances_count_towards_the_total():
    d = decide(observe(0, visible=100, instances=fleet("x" * 14)), CONFIG, PolicyMemory())
    assert d.launches == ("app-tier-instance-15",)


def test_stuck_pending_instances_are_counted_not_stopped_nor_replaced():
    memory = PolicyMemory()
    for tick in range(400):  # 100 s of ticks, with and without work
        visible = 5 if tick < 200 else 0
        d = decide(observe(tick * 0.25, visible=visible, instances=fleet("ppppp")), CONFIG, memory)
        assert d.actions == (), tick
        memory = d.memory


# --- scale in ---------------------------------------------------------------------------------


def test_drain_never_stops_while_messages_are_in_flight():
    memory = PolicyMemory()
    for tick in range(200):
        d = decide(observe(tick * 0.25, in_flight=1, instances=fleet("r" * 15)), CONFIG, memory)
        assert d.actions == ()
        memory = d.memory


def test_no_partial_scale_in_while_work_exists():
    d = run(CONFIG, None, *(observe(t, visible=1, instances=fleet("r" * 15)) for t in range(20)))
    assert d.actions == ()


def test_stops_every_running_instance_after_settle_not_before():
    instances = fleet("rrrpss")
    first = decide(observe(10.0, instances=instances), CONFIG, PolicyMemory())
    assert first.actions == ()
    early = decide(observe(10.9, instances=instances), CONFIG, first.memory)
    assert early.actions == ()
    settled = decide(observe(11.0, instances=instances), CONFIG, early.memory)
    assert settled.stops == ("i-001", "i-002", "i-003")  # not the pending one: EC2 can't
    assert all("queue empty" in a.reason for a in settled.of(Kind.STOP))
    # The pending instance is stopped on the tick it turns running.
    later = decide(observe(11.25, instances=fleet("---rss")), CONFIG, settled.memory)
    assert later.stops == ("i-004",)


def test_work_arriving_during_settle_restarts_the_timer():
    instances = fleet("r")
    d = run(
        CONFIG,
        None,
        observe(0.0, instances=instances),
        observe(0.8, visible=1, instances=instances),
        observe(1.2, instances=instances),
        observe(2.1, instances=instances),
    )
    assert d.actions == ()
    assert decide(observe(2.2, instances=instances), CONFIG, d.memory).stops == ("i-001",)


def test_trickle_keeps_one_instance_without_flapping():
    memory, starts, stops = PolicyMemory(), 0, 0
    state = "s"
    for tick in range(80):  # a message every 0.75 s, each done within the tick it is taken
        now = tick * 0.25
        visible = 1 if tick % 3 == 0 else 0
        d = decide(observe(now, visible=visible, instances=fleet(state)), CONFIG, memory)
        memory = d.memory
        starts += len(d.starts)
        stops += len(d.stops)
        state = "r" if d.starts else "s" if d.stops else state
    assert (starts, stops) == (1, 0)


# --- lagging SQS counts: the request history decides --------------------------------------------


def test_outstanding_requests_scale_out_while_sqs_counts_still_read_zero():
    # A burst: the history has 40 requests outstanding; SQS's counts have not caught up.
    d = decide(observe(0.0, outstanding=40, instances=fleet("s" * 15)), CONFIG, PolicyMemory())
    assert len(d.starts) == 15
    assert "40 outstanding" in d.of(Kind.START)[0].reason


def test_a_stale_sqs_count_does_not_hold_the_fleet_after_the_last_request():
    # Every request is final, but SQS still counts 30 messages (its counts lag by up to 1 min).
    instances = fleet("r" * 15)
    first = decide(
        observe(0.0, visible=30, outstanding=0, instances=instances), CONFIG, PolicyMemory()
    )
    assert first.actions == ()
    settled = decide(
        observe(1.0, visible=30, outstanding=0, instances=instances), CONFIG, first.memory
    )
    assert len(settled.stops) == 15
    assert all("no outstanding request" in a.reason for a in settled.of(Kind.STOP))


def test_sqs_messages_the_history_does_not_know_get_a_worker_after_count_lag():
    config = PolicyConfig(warm_pool=0, settle_seconds=1.0, count_lag=60.0)
    memory, starts = PolicyMemory(), []
    for tick in range(0, 62):
        d = decide(
            observe(float(tick), visible=2, outstanding=0, instances=fleet("ss")), config, memory
        )
        memory = d.memory
        starts.append((tick, d.starts))
    assert all(started == () for tick, started in starts if tick < 60)
    assert starts[60][1] == ("i-001", "i-002")


def test_never_a_stop_while_the_history_has_work_even_if_sqs_reads_zero():
    memory = PolicyMemory()
    for tick in range(40):
        d = decide(observe(tick * 0.25, outstanding=3, instances=fleet("rrr")), CONFIG, memory)
        assert d.stops == ()
        memory = d.memory


def test_an_unreadable_history_falls_back_to_sqs_counts():
    d = run(CONFIG, None, *(observe(t, visible=0, instances=fleet("rr")) for t in (0.0, 1.0)))
    assert d.stops == ("i-001", "i-002")
    d = decide(
        observe(0.0, visible=None, in_flight=None, outstanding=None, instances=fleet("s")),
        CONFIG,
        PolicyMemory(),
    )
    assert d.actions == () and d.desired is None


# --- refresh: stale stopped instances are replaced ------------------------------------------------


def stale(instances, *numbers):
    return tuple(
        dataclasses.replace(i, stale=True) if i.number in numbers else i for i in instances
    )


def test_stale_stopped_instances_are_terminated_and_the_pool_refilled():
    config = PolicyConfig(warm_pool=3, settle_seconds=1.0)
    instances = stale(fleet("sss"), 1, 3)
    first = decide(observe(0.0, instances=instances), config, PolicyMemory())
    assert first.terminates == ("i-001", "i-003")
    assert all("stale" in a.reason for a in first.of(Kind.TERMINATE))
    # Settled, with the two shutting down: replacements are launched from the current image.
    later = decide(observe(1.0, instances=fleet("xsx")), config, first.memory)
    assert later.launches == ("app-tier-instance-4", "app-tier-instance-5")
    # ...or, with the stale instances gone, under their freed numbers.
    gone = decide(observe(1.0, instances=fleet("tst")), config, first.memory)
    assert gone.launches == ("app-tier-instance-1", "app-tier-instance-3")


def test_a_burst_starts_current_instances_and_never_a_stale_one():
    instances = stale(fleet("ssss"), 2, 4)
    d = decide(observe(0.0, visible=4, instances=instances), CONFIG, PolicyMemory())
    assert d.starts == ("i-001", "i-003")
    assert d.terminates == ("i-002", "i-004")
    assert len(d.launches) == 2  # the shortfall, from the current image


def test_a_running_stale_instance_keeps_working():
    instances = stale(fleet("r"), 1)
    d = decide(observe(0.0, visible=1, instances=instances), CONFIG, PolicyMemory())
    assert d.actions == ()


def test_restart_with_unknown_history_does_not_scale_in_at_once():
    instances = fleet("rrr")
    d = decide(observe(1000.0, instances=instances), CONFIG, PolicyMemory())
    assert d.actions == ()
    d = decide(observe(1001.0, instances=instances), CONFIG, d.memory)
    assert len(d.stops) == 3


# --- stuck instances --------------------------------------------------------------------------


def stuck_run(last_work_at, ticks, first_tick_running=True):
    memory = PolicyMemory()
    decisions = []
    for tick in range(ticks):
        now = float(tick)
        d = decide(
            observe(now, visible=3, instances=fleet("rrr"), last_work_at=last_work_at(now)),
            CONFIG,
            memory,
        )
        decisions.append(d)
        memory = d.memory
    return decisions


def test_an_instance_without_work_while_work_waits_is_stopped_after_stuck_after():
    # i-001 and i-002 work all along, i-003 never does.
    decisions = stuck_run(lambda now: {"i-001": now, "i-002": now - 1}, 32)
    assert all(d.actions == () for d in decisions[:30])
    assert decisions[30].stops == ("i-003",)
    assert decisions[30].actions[0].reason.startswith("stuck")


def test_stale_work_counts_as_no_work():
    decisions = stuck_run(lambda now: {"i-001": now, "i-002": now, "i-003": now - 40}, 31)
    assert decisions[30].stops == ("i-003",)


def test_a_stuck_instance_is_started_again_when_still_needed():
    d = run(
        CONFIG,
        None,
        *(
            observe(t, visible=3, instances=fleet("rrr"), last_work_at={"i-001": t, "i-002": t})
            for t in range(31)
        ),
    )
    assert d.stops == ("i-003",)
    working = {"i-001": 31, "i-002": 31}
    d = decide(
        observe(31, visible=3, instances=fleet("rr-"), last_work_at=working), CONFIG, d.memory
    )
    assert d.actions == ()  # stopping: wait for it, don't launch a fourth
    d = decide(
        observe(32, visible=3, instances=fleet("rrs"), last_work_at=working), CONFIG, d.memory
    )
    assert d.starts == ("i-003",)


def test_no_stuck_verdict_unless_work_has_waited_for_stuck_after():
    memory = PolicyMemory()
    for t in range(60):  # visible flips to 0 every 20 s: the wait never lasts 30 s
        visible = 0 if t % 20 == 19 else 2
        d = decide(
            observe(float(t), visible=visible, in_flight=1, instances=fleet("rrr")), CONFIG, memory
        )
        assert d.actions == (), t
        memory = d.memory


def test_running_time_counts_from_when_the_scaler_saw_it_running():
    # An instance launched long ago but only now running (a restart or a long boot) is not
    # stuck until it has run for stuck_after under our eyes, whatever its launch time.
    memory = PolicyMemory()
    instances = (Instance("i-001", 1, State.PENDING, launched_at=0.0),)
    for t in range(30):
        memory = decide(observe(float(t), visible=1, instances=instances), CONFIG, memory).memory
    instances = (Instance("i-001", 1, State.RUNNING, launched_at=0.0),)
    for t in range(30, 60):
        d = decide(observe(float(t), visible=1, instances=instances), CONFIG, memory)
        assert d.actions == (), t
        memory = d.memory
    assert decide(observe(60.0, visible=1, instances=instances), CONFIG, memory).stops == ("i-001",)


def test_an_unreadable_request_history_suspends_stuck_verdicts():
    decisions = stuck_run(lambda now: None, 40)
    assert all(d.actions == () for d in decisions)


def test_restart_gives_no_stuck_verdict_before_stuck_after():
    late = stuck_run(lambda now: {}, 31)
    assert all(d.actions == () for d in late[:30])
    assert len(late[30].stops) == 3


# --- warm pool --------------------------------------------------------------------------------


def test_warm_pool_is_prepared_when_idle_then_stopped():
    config = PolicyConfig(max_instances=15, warm_pool=4, settle_seconds=1.0)
    d = run(config, None, observe(0.0, instances=fleet("s")), observe(1.0, instances=fleet("s")))
    assert d.launches == tuple(app_tier_name(n) for n in (2, 3, 4))
    assert all(a.reason.startswith("warm pool") for a in d.actions)
    d = decide(observe(1.25, instances=fleet("srrp")), config, d.memory)
    assert d.stops == ("i-002", "i-003")
    d = decide(observe(1.5, instances=fleet("sssr")), config, d.memory)
    assert d.stops == ("i-004",)
    d = decide(observe(1.75, instances=fleet("ssss")), config, d.memory)
    assert d.actions == ()


def test_warm_pool_never_exceeds_max():
    config = PolicyConfig(max_instances=3, warm_pool=10)
    d = run(config, None, observe(0.0), observe(2.0))
    assert len(d.launches) == 3


def test_stopped_instances_beyond_the_pool_are_terminated_when_idle():
    config = PolicyConfig(max_instances=15, warm_pool=3)
    d = run(
        config, None, observe(0.0, instances=fleet("s" * 6)), observe(2.0, instances=fleet("s" * 6))
    )
    assert d.terminates == ("i-006", "i-005", "i-004")
    # ... but never while there is work.
    busy = decide(observe(0.0, visible=1, instances=fleet("r" + "s" * 6)), config, PolicyMemory())
    assert not busy.terminates


def test_over_the_cap_stops_and_terminates_the_excess():
    config = PolicyConfig(max_instances=3, warm_pool=0)
    d = decide(observe(0, visible=9, instances=fleet("rrrrr")), config, PolicyMemory())
    assert d.stops == ("i-005", "i-004") and not d.launches and not d.starts
    d = decide(observe(0, visible=9, instances=fleet("rrrss")), config, PolicyMemory())
    assert d.terminates == ("i-005", "i-004")


# --- partial observations and API failures ----------------------------------------------------


def test_blind_ticks_act_on_nothing_and_restart_the_settle_timer():
    d = decide(observe(0.0, instances=fleet("rr")), CONFIG, PolicyMemory())
    blind = decide(Observation(5.0, 0, 0, None), CONFIG, d.memory)
    assert blind.actions == () and blind.memory.empty_since is None
    d = decide(observe(5.25, instances=fleet("rr")), CONFIG, blind.memory)
    assert d.actions == ()
    queue_blind = decide(Observation(9.0, None, None, fleet("rr")), CONFIG, d.memory)
    assert queue_blind.actions == () and queue_blind.desired is None


def outcomes(
    decision: Decision, result: ActionResult, kind: Kind | None = None
) -> tuple[Outcome, ...]:
    return tuple(
        Outcome(a, result if kind in (None, a.kind) else ActionResult.OK, "boom")
        for a in decision.actions
    )


def test_unknown_launch_is_retried_with_the_same_token_never_a_new_one():
    d = decide(observe(0.0, visible=2), CONFIG, PolicyMemory())
    first = d.of(Kind.LAUNCH)
    d = decide(
        observe(0.25, visible=2, outcomes=outcomes(d, ActionResult.UNKNOWN)), CONFIG, d.memory
    )
    assert [(a.name, a.generation, a.retry) for a in d.actions] == [
        (a.name, a.generation, True) for a in first
    ]
    # Once one shows up, only the other is retried (the backoff has grown).
    d = decide(
        observe(0.5, visible=2, instances=fleet("p"), outcomes=outcomes(d, ActionResult.UNKNOWN)),
        CONFIG,
        d.memory,
    )
    assert d.actions == ()
    d = decide(observe(1.6, visible=2, instances=fleet("r")), CONFIG, d.memory)
    assert [(a.name, a.generation, a.retry) for a in d.actions] == [
        ("app-tier-instance-2", first[1].generation, True)
    ]


def test_failed_launch_frees_its_number_and_backs_off():
    d = decide(observe(0.0, visible=1), CONFIG, PolicyMemory())
    gen = d.actions[0].generation
    d = decide(
        observe(0.25, visible=1, outcomes=outcomes(d, ActionResult.FAILED)), CONFIG, d.memory
    )
    assert d.launches == ("app-tier-instance-1",) and d.actions[0].generation > gen
    d = decide(observe(0.5, visible=1, outcomes=outcomes(d, ActionResult.FAILED)), CONFIG, d.memory)
    assert d.actions == ()  # second failing tick in a row: back off 1 s
    assert decide(observe(1.2, visible=1), CONFIG, d.memory).actions == ()
    d = decide(observe(1.5, visible=1), CONFIG, d.memory)
    assert d.launches == ("app-tier-instance-1",)
    d = decide(
        observe(1.75, visible=1, outcomes=outcomes(d, ActionResult.FAILED)), CONFIG, d.memory
    )
    assert decide(observe(3.6, visible=1), CONFIG, d.memory).actions == ()  # now 2 s
    assert decide(observe(3.8, visible=1), CONFIG, d.memory).launches == ("app-tier-instance-1",)


def test_confirmed_launch_not_yet_visible_is_forgotten_after_launch_timeout():
    d = decide(observe(0.0, visible=1), CONFIG, PolicyMemory())
    d = decide(observe(0.25, visible=1, outcomes=outcomes(d, ActionResult.OK)), CONFIG, d.memory)
    assert d.actions == ()
    d = decide(observe(119.0, visible=1), CONFIG, d.memory)
    assert d.actions == ()
    d = decide(observe(120.0, visible=1), CONFIG, d.memory)
    assert d.launches == ("app-tier-instance-1",) and not d.of(Kind.LAUNCH)[0].retry


def test_failing_starts_back_off_without_launching_replacements():
    instances = fleet("sss")
    d = decide(observe(0.0, visible=3, instances=instances), CONFIG, PolicyMemory())
    for now in (0.25, 0.5):
        d = decide(
            observe(now, visible=3, instances=instances, outcomes=outcomes(d, ActionResult.FAILED)),
            CONFIG,
            d.memory,
        )
    assert d.actions == ()  # backing off, and the stopped instances are not replaced
    d = decide(observe(1.5, visible=3, instances=instances), CONFIG, d.memory)
    assert len(d.starts) == 3


def test_a_success_resets_the_backoff():
    d = decide(observe(0.0, visible=1, instances=fleet("s")), CONFIG, PolicyMemory())
    d = decide(
        observe(0.25, visible=1, instances=fleet("s"), outcomes=outcomes(d, ActionResult.FAILED)),
        CONFIG,
        d.memory,
    )
    d = decide(
        observe(0.5, visible=1, instances=fleet("s"), outcomes=outcomes(d, ActionResult.OK)),
        CONFIG,
        d.memory,
    )
    assert d.memory.failures == {} and d.memory.retry_at == {}


# --- randomised: a simulated fleet under random load and random API failures -------------------


@dataclass
class SimInstance:
    id: str
    number: int
    state: State
    ready_at: float  # pending -> running, stopping -> stopped, worker boot
    dead: bool  # its worker never takes work, until a stop/start reboots it
    busy_until: float | None = None
    idle_since: float = 0.0


class Simulation:
    """A toy EC2 + SQS + workers: enough to break the policy's invariants if it can be broken."""

    def __init__(self, rng: random.Random, config: PolicyConfig, failure_rate: float) -> None:
        self.rng, self.config, self.failure_rate = rng, config, failure_rate
        self.instances: dict[str, SimInstance] = {}
        self.tokens: dict[tuple[str, int], str] = {}
        self.visible = 0
        self.last_work: dict[str, float] = {}
        self.served = 0

    def observe(self, now: float, outcomes: tuple[Outcome, ...]) -> Observation:
        blind = self.rng.random() < self.failure_rate / 4
        in_flight = sum(1 for i in self.instances.values() if i.busy_until is not None)
        return Observation(
            now,
            self.visible,
            in_flight,
            None
            if blind
            else tuple(Instance(i.id, i.number, i.state) for i in self.instances.values()),
            last_work_at=dict(self.last_work),
            outcomes=outcomes,
        )

    def apply(self, actions: tuple[Action, ...], now: float) -> tuple[Outcome, ...]:
        results = []
        for action in actions:
            roll = self.rng.random()
            if roll < self.failure_rate:
                results.append(Outcome(action, ActionResult.FAILED))
            elif roll < 2 * self.failure_rate:  # no answer: done or not, who knows
                if self.rng.random() < 0.5:
                    self.execute(action, now)
                results.append(Outcome(action, ActionResult.UNKNOWN))
            else:
                self.execute(action, now)
                results.append(Outcome(action, ActionResult.OK))
        return tuple(results)

    def execute(self, action: Action, now: float) -> None:
        rng = self.rng
        if action.kind == Kind.LAUNCH:
            token = (action.name, action.generation)
            if token in self.tokens:  # EC2's ClientToken idempotency
                return
            new_id = f"i-{len(self.tokens):04d}"
            self.tokens[token] = new_id
            self.instances[new_id] = SimInstance(
                new_id,
                app_tier_number(action.name),
                State.PENDING,
                now + rng.uniform(0, 2),
                dead=rng.random() < 0.1,
            )
            return
        instance = self.instances[action.instance_id]
        if action.kind == Kind.START:
            assert instance.state == State.STOPPED, action
            instance.state, instance.ready_at = State.PENDING, now + rng.uniform(0, 1)
        elif action.kind == Kind.STOP:
            assert instance.state == State.RUNNING, action
            self.stop(instance, now)
        else:
            assert instance.state == State.STOPPED, action
            instance.state = State.TERMINATED

    def stop(self, instance: SimInstance, now: float) -> None:
        if instance.busy_until is not None:  # the message goes back to the queue
            self.visible += 1
            instance.busy_until = None
        instance.state, instance.ready_at = State.STOPPING, now + self.rng.uniform(0, 1)
        instance.dead = False  # a stop/start reboots the worker

    def advance(self, now: float, arrivals: int) -> None:
        self.visible += arrivals
        for i in self.instances.values():
            if i.state == State.PENDING and now >= i.ready_at:
                i.state, i.ready_at, i.idle_since = State.RUNNING, now + 0.5, now
            elif i.state == State.STOPPING and now >= i.ready_at:
                i.state = State.STOPPED
            if i.state != State.RUNNING or i.dead or now < i.ready_at:
                continue
            if i.busy_until is not None and now >= i.busy_until:
                i.busy_until, i.idle_since = None, now
                self.served += 1
                self.last_work[i.id] = now
            if i.busy_until is None and self.visible:
                self.visible -= 1
                i.busy_until = now + self.rng.uniform(0.2, 2.0)
                self.last_work[i.id] = now
            elif i.busy_until is None and now - i.idle_since > 2.0 and self.rng.random() < 0.3:
                self.stop(i, now)  # the worker stops its own idle instance


@pytest.mark.parametrize("seed", range(40))
def test_random_load_never_breaks_the_invariants(seed):
    rng = random.Random(seed)
    config = PolicyConfig(
        max_instances=rng.choice([1, 3, 15]),
        requests_per_instance=rng.choice([1, 1, 2]),
        warm_pool=rng.choice([0, 2, 15]),
        settle_seconds=1.0,
        stuck_after=5.0,
        retry_base=0.5,
        retry_cap=2.0,
    )
    sim = Simulation(rng, config, failure_rate=rng.choice([0.0, 0.05, 0.2]))
    memory, outcomes, tick, total_sent = PolicyMemory(), (), 0.25, 0
    load_ticks, total_ticks = 120, 600
    for step in range(total_ticks):
        now = step * tick
        burst = 2 * config.max_instances * config.requests_per_instance
        arrivals = rng.choice([0] * 20 + [1, 2, burst]) if step < load_ticks else 0
        total_sent += arrivals
        sim.advance(now, arrivals)
        obs = sim.observe(now, outcomes)
        decision = decide(obs, config, memory)
        memory = decision.memory
        by_id = {i.id: i for i in obs.instances or ()}
        live_names = {i.name for i in by_id.values() if i.state != State.TERMINATED}
        launched = decision.launches
        assert len(set(launched)) == len(launched)
        for action in decision.actions:
            if action.kind == Kind.LAUNCH:
                assert action.retry or action.name not in live_names
                assert app_tier_number(action.name) <= config.max_instances
            else:
                expected = State.STOPPED if action.kind != Kind.STOP else State.RUNNING
                assert by_id[action.instance_id].state == expected, action
        if obs.visible or obs.in_flight:
            assert all(a.reason.startswith("stuck") for a in decision.of(Kind.STOP)), decision
            assert not decision.terminates
        outcomes = sim.apply(decision.actions, now)
        states = [i.state for i in sim.instances.values()]
        active = sum(s in (State.PENDING, State.RUNNING) for s in states)
        assert active <= config.max_instances, (step, states)
        assert sum(s != State.TERMINATED for s in states) <= config.max_instances
    # Every message served, and the fleet at rest: nothing running, the warm pool stopped.
    assert sim.served == total_sent and sim.visible == 0
    live = [i for i in sim.instances.values() if i.state != State.TERMINATED]
    assert all(i.state == State.STOPPED for i in live)
    assert len(live) == min(config.warm_pool, config.max_instances)
