"""The learner's table of actors: who is connected, how fast, on which policy version.

How fast is what the learner received: each actor's ``steps_per_second`` is the steps of
its games that arrived over the last ``RATE_WINDOW_SECONDS`` (or since it first said hello,
if later), counted here as they arrive. It is the one figure every view reports
(``metrics.jsonl``'s ``actors`` and their sum ``actor_steps_per_second``, ``status.json``,
the dashboard, the plain log, the web view), so an actor that pauses on back-pressure
reads what it delivered, not 0.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

RATE_WINDOW_SECONDS = 30.0


class ActorState(StrEnum):
    STARTING = "starting"  # said hello, nothing delivered yet
    HEALTHY = "healthy"
    STALE = "stale"  # silent for a while
    FAILED = "failed"
    STOPPED = "stopped"  # said bye


@dataclass
class ActorInfo:
    actor_id: str
    host: str = ""
    pid: int = 0
    state: ActorState = ActorState.STARTING
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    last_games_at: float | None = None
    steps_per_second: float = 0.0  # delivered (see the module docstring); set by snapshots
    policy_version: int = -1
    games_received: int = 0
    steps_received: int = 0
    invalid_messages: int = 0
    batches_dropped: int = 0
    steps_dropped: int = 0
    restarts: int = 0
    awaiting_hello: bool = False  # restarted by the supervisor: its new process may claim the id
    first_seen: float = field(default_factory=time.monotonic)  # its first hello, over restarts
    # (arrival time, steps) of the games received within the rate window
    deliveries: deque[tuple[float, int]] = field(default_factory=deque, repr=False)

    def as_dict(self, now: float) -> dict[str, object]:
        return {"actor_id": self.actor_id, "host": self.host, "pid": self.pid,
                "state": str(self.state), "steps_per_second": round(self.steps_per_second, 1),
                "policy_version": self.policy_version, "games_received": self.games_received,
                "steps_received": self.steps_received, "invalid_messages": self.invalid_messages,
                "steps_dropped": self.steps_dropped, "restarts": self.restarts,
                "seconds_since_heard": round(now - self.last_seen, 1)}


class ActorTable:
    """Thread-safe record of every actor seen; the server thread writes, others read copies.
    Times come from ``clock`` (monotonic seconds; tests pass their own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 rate_window: float = RATE_WINDOW_SECONDS) -> None:
        self.rate_window = rate_window
        self._actors: dict[str, ActorInfo] = {}
        self._connection_of: dict[str, bytes] = {}  # actor id -> its connection, and back
        self._actor_of: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self.clock = clock

    # --- connections (the server's ZeroMQ identities) -----------------------------------
    def connect(self, actor_id: str, connection: bytes, host: str, pid: int, *,
                takeover_after: float = math.inf, capacity: int = 1_000_000) -> str | None:
        """A hello on ``connection``: record it (``hello``) and make ``connection`` speak
        for ``actor_id``; return why it is refused, or None. A connection speaks for one
        actor only."""
        with self._lock:
            held = self._connection_of.get(actor_id)
            speaks_for = self._actor_of.get(connection, actor_id)
        if speaks_for != actor_id:
            return f"this connection already speaks for actor {speaks_for!r}"
        refused = self.hello(actor_id, host, pid, new_connection=held != connection,
                             takeover_after=takeover_after, capacity=capacity)
        if refused is None:
            with self._lock:
                if held is not None and held != connection:
                    self._actor_of.pop(held, None)
                self._connection_of[actor_id] = connection
                self._actor_of[connection] = actor_id
        return refused

    def sender(self, connection: bytes) -> str | None:
        """The actor ``connection`` speaks for, if it said hello and is still in the table."""
        with self._lock:
            actor_id = self._actor_of.get(connection)
            if actor_id is not None and actor_id not in self._actors:  # forgotten (expired)
                self._drop_connection(actor_id)
                return None
            return actor_id

    def disconnect(self, actor_id: str) -> None:
        """``actor_id`` no longer speaks on its connection (it said bye)."""
        with self._lock:
            self._drop_connection(actor_id)

    def connections(self) -> list[bytes]:
        """Every connection that speaks for an actor."""
        with self._lock:
            return list(self._connection_of.values())

    def _drop_connection(self, actor_id: str) -> None:
        connection = self._connection_of.pop(actor_id, None)
        if connection is not None:
            self._actor_of.pop(connection, None)

    # --- what actors say ----------------------------------------------------------------

    def hello(self, actor_id: str, host: str, pid: int, *, new_connection: bool = True,
              takeover_after: float = math.inf, capacity: int = 1_000_000) -> str | None:
        """Record a hello; return why it is refused, or None.

        An id belongs to one connection: another may claim it only once the holder said
        bye, failed, fell silent for ``takeover_after`` seconds, or was restarted by the
        supervisor. A hello on the holder's own connection keeps its start time (so
        repeating hello does not extend the "still starting" grace). New ids are refused
        while ``capacity`` entries are held.
        """
        with self._lock:
            previous = self._actors.get(actor_id)
            now = self.clock()
            if previous is None and len(self._actors) >= capacity:
                return f"the learner's actor table is full ({capacity} actors)"
            if previous is not None and new_connection and not previous.awaiting_hello \
                    and previous.state not in (ActorState.STOPPED, ActorState.FAILED) \
                    and now - previous.last_seen <= takeover_after:
                return f"actor id {actor_id!r} belongs to a live connection"
            info = ActorInfo(actor_id, host, pid, connected_at=now, last_seen=now, first_seen=now)
            if previous is not None:
                info.restarts = previous.restarts
                info.first_seen, info.deliveries = previous.first_seen, previous.deliveries
                info.games_received, info.steps_received = previous.games_received, previous.steps_received
                if not new_connection:
                    info.connected_at, info.last_games_at = previous.connected_at, previous.last_games_at
                    info.state = previous.state
            self._actors[actor_id] = info
            return None

    def forget(self, older_than: float, keep: set[str]) -> list[str]:
        """Remove stopped, failed or silent actors not heard from for ``older_than``
        seconds (except ``keep``); return their ids."""
        with self._lock:
            now = self.clock()
            gone = [actor_id for actor_id, info in self._actors.items()
                    if actor_id not in keep and now - info.last_seen > older_than]
            for actor_id in gone:
                del self._actors[actor_id]
                self._drop_connection(actor_id)
        return gone

    def heartbeat(self, actor_id: str, policy_version: int, batches_dropped: int,
                  steps_dropped: int) -> bool:
        """Record a heartbeat; False if the actor never said hello. (The rate an actor
        says it plays at is not kept: its rate is what arrived, see ``snapshot``.)"""
        with self._lock:
            info = self._actors.get(actor_id)
            if info is None:
                return False
            info.last_seen = self.clock()
            info.policy_version = policy_version
            info.batches_dropped, info.steps_dropped = batches_dropped, steps_dropped
            if info.state is ActorState.STALE:
                info.state = ActorState.HEALTHY if info.last_games_at else ActorState.STARTING
            return True

    def games(self, actor_id: str, games: int, steps: int) -> None:
        with self._lock:
            info = self._actors.get(actor_id)
            if info is None:
                return
            info.last_seen = info.last_games_at = now = self.clock()
            info.games_received += games
            info.steps_received += steps
            info.deliveries.append((now, steps))
            self._trim(info, now)
            info.state = ActorState.HEALTHY

    def invalid(self, actor_id: str | None) -> None:
        with self._lock:
            info = self._actors.get(actor_id) if actor_id else None
            if info is not None:
                info.invalid_messages += 1

    def bye(self, actor_id: str) -> None:
        with self._lock:
            info = self._actors.get(actor_id)
            if info is not None:
                info.state = ActorState.STOPPED

    def known(self, actor_id: str) -> bool:
        with self._lock:
            return actor_id in self._actors

    def snapshot(self) -> list[ActorInfo]:
        """Copies of every entry, each ``steps_per_second`` the steps it delivered over the
        last ``rate_window`` seconds (or since its first hello, if later) per second."""
        with self._lock:
            now = self.clock()
            copies = []
            for info in self._actors.values():
                self._trim(info, now)
                span = max(1.0, min(self.rate_window, now - info.first_seen))
                rate = sum(steps for _, steps in info.deliveries) / span
                copies.append(replace(info, steps_per_second=rate, deliveries=deque()))
            return copies

    def _trim(self, info: ActorInfo, now: float) -> None:
        deliveries = info.deliveries
        while deliveries and deliveries[0][0] <= now - self.rate_window:
            deliveries.popleft()

    def restarted(self, actor_id: str) -> None:
        """A new process replaces the actor: count it, and give it time to say hello."""
        with self._lock:
            info = self._actors.get(actor_id)
            if info is not None:
                info.restarts += 1
                info.state = ActorState.STARTING
                info.awaiting_hello = True
                info.last_seen = info.connected_at = self.clock()
                info.last_games_at = None

    def mark(self, actor_id: str, state: ActorState) -> None:
        with self._lock:
            if actor_id in self._actors:
                self._actors[actor_id].state = state
