"""The supervisor: watches actors, restarts local ones, and decides where games come from.

It runs on its own thread, every 0.2 s:

* an actor silent past ``heartbeat_timeout`` is **stale** (a local one whose process is
  alive stays stale and recovers when it speaks again; a remote one silent three times
  that long is **failed**);
* a local actor whose process died or turned zombie (psutil) is **failed**;
* an actor that heartbeats but delivers no games for ``stall_timeout`` while the learner
  wants data is **failed** (a local one is killed);
* failed local actors are restarted with exponential backoff (1, 2, 4 ... 30 s), at most
  ``max_restarts`` times within ``restart_window``;
* when no actor has delivered data for ``collect_timeout`` while the learner waits for
  it (actors still playing their first games hold this off, for up to ``stall_timeout``),
  the supervisor **downgrades**: it stops and reaps every local actor (terminate,
  then kill, children included), and the trainer collects in-process (``sequential``),
  without retrying local actors;
* while sequential the server keeps listening: once ``min_actors`` healthy actors have
  delivered games again, it **upgrades** back to ``distributed``.

Every detection and transition is logged with its cause, counted in the metrics and
written, with the actor table, to ``status.json`` in the run directory each second.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from keisei.config import SupervisorConfig
from keisei.files import write_json_atomically
from learner.actors import ActorInfo, ActorState, ActorTable
from learner.local_actors import LocalActors
from learner.reports import Mode, SupervisionReport, Transition
from learner.server import LearnerServer

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0


class TrainingProgress(Protocol):
    """What the supervisor reads of the trainer, for its reports and ``status.json``."""

    @property
    def step(self) -> int: ...
    @property
    def epoch(self) -> int: ...
    @property
    def policy_version(self) -> int: ...
    @property
    def in_flight_steps_discarded(self) -> int: ...


class Supervisor:
    """Actor health, restarts and the collection mode (a context manager running a thread).

    It owns the mode: it starts ``distributed`` and switches it; the trainer reads it.
    Of the trainer it reads only its ``progress`` (step, epoch, policy version). ``clock`` gives monotonic
    seconds (the thread calls ``check(clock())``; tests call ``check`` with their own
    times and fakes of the server and the local actors).
    """

    def __init__(self, config: SupervisorConfig, progress: TrainingProgress, server: LearnerServer,
                 actors: ActorTable, local: LocalActors | None, status_path: Path,
                 interval: float = 0.2, clock: Callable[[], float] = time.monotonic,
                 forget_after: float = 600.0,
                 ledger: Callable[[], dict[str, Any]] | None = None) -> None:
        self.config = config
        self.progress = progress
        self.server = server
        self.actors = actors
        self.local = local
        self.status_path = status_path
        self.interval = interval
        self.clock = clock
        self.forget_after = forget_after  # seconds before a gone actor's entry is removed
        self.ledger = ledger  # the step ledger, for status.json
        self.mode = Mode.DISTRIBUTED
        self.transitions: list[Transition] = []
        self.detections = 0
        self.restarts = 0
        self.downgraded = False  # local actors are not retried after a downgrade
        self._mode_since = clock()
        self._restart_history: dict[str, deque[float]] = {}
        self._restart_due: dict[str, float] = {}
        self._given_up: set[str] = set()
        self._reported: dict[str, ActorState] = {}
        self._last_status = 0.0
        self._status_failing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)
        self.write_status()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.check(self.clock())
            except Exception:  # supervision must outlive its own bugs
                logger.exception("supervisor check failed")

    # --- one round ----------------------------------------------------------------------
    def check(self, now: float) -> None:
        local = set(self.local.processes) if self.local is not None and not self.downgraded else set()
        for actor_id in self.actors.forget(self.forget_after, keep=local):
            self._reported.pop(actor_id, None)
            logger.info("forgot actor %s: not heard from for %.0f s", actor_id, self.forget_after)
        for info in self.actors.snapshot():
            self._judge(info, now)
        self._restart_when_due(now)
        if self.mode is Mode.DISTRIBUTED:
            self._maybe_downgrade(now)
        else:
            self._maybe_upgrade(now)
        if now - self._last_status >= 1.0:
            self._last_status = now
            self.write_status()

    def _judge(self, info: ActorInfo, now: float) -> None:
        if info.state is ActorState.STOPPED or info.actor_id in self._given_up:
            return
        local = self.local is not None and info.actor_id in self.local.processes
        if local and not self.downgraded:
            assert self.local is not None
            dead = self.local.dead_reason(info.actor_id)
            if dead is not None:
                self._fail(info, f"process {dead}", now)
                return
        silent = now - info.last_seen
        if not local and silent > 3 * self.config.heartbeat_timeout:
            self._report(info, ActorState.FAILED, f"no heartbeat for {silent:.1f} s")
            return
        if silent > self.config.heartbeat_timeout:
            alive = " (process alive)" if local else ""
            self._report(info, ActorState.STALE, f"no heartbeat for {silent:.1f} s{alive}")
            return
        if self.server.accepting():
            waited = now - max(self.server.accepting_since, info.last_games_at or info.connected_at)
            if waited > self.config.stall_timeout:
                self._fail(info, f"heartbeats but delivered no games for {waited:.1f} s", now)
                return
        self._reported.pop(info.actor_id, None)  # healthy again: report the next problem

    def _report(self, info: ActorInfo, state: ActorState, cause: str) -> None:
        self.actors.mark(info.actor_id, state)
        if self._reported.get(info.actor_id) is not state:
            self._reported[info.actor_id] = state
            self.detections += 1
            logger.warning("actor %s is %s: %s", info.actor_id, state, cause)

    def _fail(self, info: ActorInfo, cause: str, now: float) -> None:
        self._report(info, ActorState.FAILED, cause)
        if self.local is None or info.actor_id not in self.local.processes or self.downgraded \
                or info.actor_id in self._restart_due:
            return
        self.local.stop(info.actor_id)
        history = self._restart_history.setdefault(info.actor_id, deque())
        while history and now - history[0] > self.config.restart_window:
            history.popleft()
        if len(history) >= self.config.max_restarts:
            self._given_up.add(info.actor_id)
            logger.error("actor %s failed %d times within %.0f s: not restarting it", info.actor_id,
                         len(history) + 1, self.config.restart_window)
            return
        delay = min(2.0 ** len(history), MAX_BACKOFF_SECONDS)
        self._restart_due[info.actor_id] = now + delay
        logger.info("restarting actor %s in %.0f s", info.actor_id, delay)

    def _restart_when_due(self, now: float) -> None:
        for actor_id, due in list(self._restart_due.items()):
            if now < due or self.local is None:
                continue
            del self._restart_due[actor_id]
            if self.downgraded:
                continue
            self._restart_history[actor_id].append(now)
            self.restarts += 1
            self.actors.restarted(actor_id)
            self.local.start(actor_id)

    def _maybe_downgrade(self, now: float) -> None:
        if not self.server.accepting():
            return
        idle = now - max(self.server.last_games_at, self.server.accepting_since, self._mode_since)
        if idle <= self.config.collect_timeout:
            return
        if idle <= self.config.stall_timeout and any(self._still_starting(info, now)
                                                     for info in self.actors.snapshot()):
            return  # playing its first games (a large network can take a while): wait, a while
        cause = f"no actor delivered games for {idle:.1f} s"
        if self.local is not None:
            self.local.close()  # terminate, then kill, children included
        self.downgraded = True
        self._restart_due.clear()
        self._switch(Mode.SEQUENTIAL, cause, now)

    def _still_starting(self, info: ActorInfo, now: float) -> bool:
        """Heard from, but no game finished yet (loading weights or playing its first games),
        for less than stall_timeout."""
        return (info.state is ActorState.STARTING
                and now - info.last_seen <= self.config.heartbeat_timeout
                and now - info.connected_at <= self.config.stall_timeout)

    def _maybe_upgrade(self, now: float) -> None:
        delivering = [info for info in self.actors.snapshot()
                      if info.state is ActorState.HEALTHY and info.last_games_at is not None
                      and info.last_games_at > self._mode_since]
        if len(delivering) >= self.config.min_actors:
            names = ", ".join(info.actor_id for info in delivering)
            self._switch(Mode.DISTRIBUTED, f"{len(delivering)} actor(s) delivering games ({names})", now)

    def _switch(self, mode: Mode, cause: str, now: float) -> None:
        self._mode_since = now
        self.mode = mode
        self.transitions.append(Transition(time.time(), str(mode), cause))
        logger.warning("collection mode is now %s: %s", mode, cause)
        self.write_status()

    # --- reporting ----------------------------------------------------------------------
    def report(self) -> SupervisionReport:
        """The mode history and supervision counters, for each epoch's report."""
        return SupervisionReport(len(self.transitions), self.transitions[-10:], self.detections,
                                 self.restarts, self.progress.in_flight_steps_discarded)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        progress = self.progress
        return {"time": time.time(), "state": "running", "pid": os.getpid(), "mode": str(self.mode),
                "step": progress.step, "epoch": progress.epoch,
                "policy_version": progress.policy_version,
                "actors": [info.as_dict(now) for info in self.actors.snapshot()],
                "ledger": self.ledger() if self.ledger is not None else None,
                "transitions": [asdict(item) for item in self.transitions[-20:]]}

    def write_status(self) -> None:
        """``status.json`` in the run directory, replaced atomically (a failed write, e.g.
        on a full disk, is logged once and retried at the next second)."""
        try:
            write_json_atomically(self.status_path, self.status())
            self._status_failing = False
        except OSError as exc:
            if not self._status_failing:
                logger.error("cannot write %s: %s", self.status_path, exc)
            self._status_failing = True
