"""The supervisor's state machine, row by row of the README's failure model, on an
injected clock: fake server and local processes, ``check(now)`` called by hand, no
thread, no sleep, no real process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from keisei.config import SupervisorConfig
from learner.actors import ActorState, ActorTable
from learner.reports import Mode
from learner.supervisor import Supervisor

CONFIG = SupervisorConfig(heartbeat_timeout=5.0, stall_timeout=60.0, collect_timeout=30.0,
                          max_restarts=2, restart_window=600.0, min_actors=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    policy_version: int = 0
    in_flight_steps_discarded: int = 0


class FakeServer:
    """Wants data unless ``wanting`` is False; times as the real server keeps them."""

    def __init__(self, clock: Clock) -> None:
        self.wanting = True
        self.accepting_since = self.last_games_at = clock.now

    def accepting(self) -> bool:
        return self.wanting


class FakeLocal:
    def __init__(self, *actor_ids: str) -> None:
        self.processes: dict[str, object] = {actor_id: object() for actor_id in actor_ids}
        self.dead: dict[str, str] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.closed = False

    def dead_reason(self, actor_id: str) -> str | None:
        return self.dead.get(actor_id)

    def start(self, actor_id: str) -> object:
        self.started.append(actor_id)
        self.dead.pop(actor_id, None)
        return self.processes[actor_id]

    def stop(self, actor_id: str, grace_seconds: float = 3.0) -> None:
        self.stopped.append(actor_id)

    def close(self, grace_seconds: float = 5.0) -> None:
        self.closed = True


@dataclass
class Rig:
    clock: Clock
    actors: ActorTable
    server: FakeServer
    local: FakeLocal
    supervisor: Supervisor

    def advance(self, seconds: float, step: float = 0.2) -> None:
        """Let ``seconds`` pass, checking every ``step`` as the supervisor's thread does."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(self.clock.now + step, end)
            self.supervisor.check(self.clock.now)

    def deliver(self, actor_id: str, steps: int = 100) -> None:
        self.actors.games(actor_id, 1, steps)
        self.server.last_games_at = self.clock.now

    def state(self, actor_id: str) -> ActorState:
        return next(info.state for info in self.actors.snapshot() if info.actor_id == actor_id)


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    clock = Clock()
    actors = ActorTable(clock=clock)
    server, local = FakeServer(clock), FakeLocal("local-0", "local-1")
    supervisor = Supervisor(CONFIG, Progress(), server, actors, local, tmp_path / "status.json",
                            clock=clock)
    for actor_id in local.processes:
        actors.hello(actor_id, "host", 1)
    return Rig(clock, actors, server, local, supervisor)


def test_a_dead_process_fails_and_restarts_with_backoff_then_is_given_up(rig: Rig) -> None:
    rig.deliver("local-1")
    for attempt, backoff in enumerate((1.0, 2.0)):
        rig.local.dead["local-0"] = "exited with code -9"
        rig.advance(0.2)
        assert rig.state("local-0") is ActorState.FAILED and rig.local.stopped[-1] == "local-0"
        rig.advance(backoff - 0.2)
        assert len(rig.local.started) == attempt  # not before the backoff has passed
        rig.advance(0.2)
        assert rig.local.started == ["local-0"] * (attempt + 1)
        assert rig.state("local-0") is ActorState.STARTING
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.deliver("local-0")
        rig.deliver("local-1")
    rig.local.dead["local-0"] = "is a zombie"
    rig.advance(60)  # a third failure within restart_window: max_restarts (2) is spent
    assert rig.local.started == ["local-0", "local-0"] and rig.supervisor.restarts == 2
    info = next(item for item in rig.actors.snapshot() if item.actor_id == "local-0")
    assert info.state is ActorState.FAILED and info.restarts == 2


def test_silence_makes_an_actor_stale_and_speaking_makes_it_healthy(rig: Rig) -> None:
    rig.deliver("local-0")
    rig.deliver("local-1")
    rig.advance(4.8)
    rig.actors.heartbeat("local-1", 0, 0, 0)
    rig.deliver("local-1")
    assert rig.state("local-0") is ActorState.HEALTHY
    rig.advance(0.4)  # local-0 silent for 5.2 s > heartbeat_timeout
    assert rig.state("local-0") is ActorState.STALE and rig.supervisor.detections == 1
    rig.advance(20)  # a local actor whose process lives stays stale, never failed
    assert rig.state("local-0") is ActorState.STALE and rig.local.stopped == []
    rig.actors.heartbeat("local-0", 0, 0, 0)
    assert rig.state("local-0") is ActorState.HEALTHY


def test_a_remote_actor_silent_for_three_timeouts_is_failed(rig: Rig) -> None:
    rig.actors.hello("remote", "elsewhere", 7)
    rig.deliver("remote")
    rig.advance(5.2)
    assert rig.state("remote") is ActorState.STALE
    rig.advance(15.0 - 5.2 - 0.2)
    assert rig.state("remote") is ActorState.STALE
    rig.advance(0.4)
    assert rig.state("remote") is ActorState.FAILED
    assert rig.local.stopped == []  # nothing to stop or restart for a remote actor


def test_heartbeats_without_games_fail_an_actor_only_while_data_is_wanted(rig: Rig) -> None:
    rig.server.wanting = False  # back-pressure: actors pause, and that is no stall
    for _ in range(100):
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.actors.heartbeat("local-1", 0, 0, 0)
        rig.deliver("local-1") if rig.clock.now < 1001 else None
        rig.advance(1.0)
    assert rig.state("local-0") is ActorState.STARTING and rig.local.stopped == []
    rig.server.wanting, rig.server.accepting_since = True, rig.clock.now
    for _ in range(59):
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.actors.heartbeat("local-1", 0, 0, 0)
        rig.deliver("local-1")
        rig.advance(1.0)
    assert rig.state("local-0") is ActorState.STARTING
    rig.actors.heartbeat("local-0", 0, 0, 0)
    rig.advance(1.2)  # wanted for 60.2 s > stall_timeout, no game from local-0
    assert rig.state("local-0") is ActorState.FAILED and rig.local.stopped == ["local-0"]
    rig.advance(1.0)
    assert rig.local.started == ["local-0"]  # killed and restarted


def test_no_data_for_collect_timeout_downgrades_and_new_games_upgrade(rig: Rig) -> None:
    rig.deliver("local-0")
    rig.deliver("local-1")
    rig.advance(29.8)
    assert rig.supervisor.mode is Mode.DISTRIBUTED
    rig.advance(0.4)  # 30.2 s without games while wanted
    assert rig.supervisor.mode is Mode.SEQUENTIAL and rig.local.closed
    assert "no actor delivered games for 30.2 s" in rig.supervisor.transitions[-1].cause
    assert json.loads(rig.supervisor.status_path.read_text())["mode"] == "sequential"
    rig.local.dead["local-0"] = "exited with code -15"
    rig.advance(60)
    assert rig.local.started == []  # local actors are not retried after a downgrade
    rig.actors.hello("remote", "elsewhere", 7)
    rig.advance(1.0)
    assert rig.supervisor.mode is Mode.SEQUENTIAL  # a hello alone does not upgrade
    rig.deliver("remote")
    rig.advance(0.2)
    assert rig.supervisor.mode is Mode.DISTRIBUTED
    assert [transition.mode for transition in rig.supervisor.transitions] == ["sequential",
                                                                             "distributed"]
    report = rig.supervisor.report()
    assert report.mode_transitions == 2 and report.failures_detected >= 1


def test_an_actor_playing_its_first_games_holds_the_downgrade_off(rig: Rig) -> None:
    # Both actors heartbeat but have not finished a game (a large network is slow).
    for _ in range(59):
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.actors.heartbeat("local-1", 0, 0, 0)
        rig.advance(1.0)
    assert rig.supervisor.mode is Mode.DISTRIBUTED  # 59 s > collect_timeout, still starting
    for _ in range(2):
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.actors.heartbeat("local-1", 0, 0, 0)
        rig.advance(1.0)
    assert rig.supervisor.mode is Mode.SEQUENTIAL  # past stall_timeout: failed, then downgrade


def test_min_actors_must_deliver_before_an_upgrade(tmp_path: Path) -> None:
    clock = Clock()
    actors = ActorTable(clock=clock)
    config = SupervisorConfig(heartbeat_timeout=5.0, stall_timeout=60.0, collect_timeout=30.0,
                              min_actors=2)
    server = FakeServer(clock)
    supervisor = Supervisor(config, Progress(), server, actors, None, tmp_path / "status.json",
                            clock=clock)
    clock.now += 31
    supervisor.check(clock.now)
    assert supervisor.mode is Mode.SEQUENTIAL
    clock.now += 1
    for name in ("a", "b"):
        actors.hello(name, "h", 1)
    actors.games("a", 1, 50)
    supervisor.check(clock.now)
    assert supervisor.mode is Mode.SEQUENTIAL
    actors.games("b", 1, 50)
    supervisor.check(clock.now)
    assert supervisor.mode is Mode.DISTRIBUTED and "2 actor(s)" in supervisor.transitions[-1].cause


def test_an_actor_repeating_hello_cannot_hold_the_downgrade_off(rig: Rig) -> None:
    rig.actors.hello("squatter", "elsewhere", 9)
    for _ in range(25):  # says hello every 3 s on its connection, never sends a game
        rig.advance(3.0)
        rig.actors.hello("squatter", "elsewhere", 9, new_connection=False)
        rig.actors.heartbeat("local-0", 0, 0, 0)
        rig.actors.heartbeat("local-1", 0, 0, 0)
    assert rig.supervisor.mode is Mode.SEQUENTIAL
    assert "no actor delivered games for 6" in rig.supervisor.transitions[-1].cause  # at 60.x s
