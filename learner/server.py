"""The learner's ZeroMQ endpoints, served by one thread so receiving never waits on PPO.

A ROUTER (``--bind``, default ``tcp://127.0.0.1:5555``) takes ``hello``, ``heartbeat``,
``games`` and ``bye`` from actors and answers ``welcome``/``reject``/``ack``/``shutdown``;
a PUB one port above it publishes weights, again every ``publish_interval`` so a late
joiner gets the current version within that time, and with them the opponent pool
(``publish_pool``: its table and one opponent's weights each time, in turn). Games go to ``learner.admission``,
which validates them and queues them for the buffer (the same path the in-process
collector's games take); anything malformed is dropped and counted, never raised. Only
this thread touches the sockets; other threads call ``publish``, ``publish_pool`` and ``close``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
import zmq
from zmq.auth.thread import ThreadAuthenticator

from keisei.config import WireConfig
from keisei.pool import OpponentPool
from keisei.protocol import (
    ACCEPTED_VERSIONS,
    POOL_TOPIC,
    WEIGHTS_TOPIC,
    Ack,
    Bye,
    CurveKeys,
    Frame,
    Games,
    Heartbeat,
    Hello,
    Limits,
    Pool,
    ProtocolError,
    Reject,
    Shutdown,
    Weights,
    Welcome,
    apply_keys,
    decode,
    encode,
)
from learner.actors import ActorTable
from learner.admission import Admission, InvalidGames

logger = logging.getLogger(__name__)


def wire_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A network's weights as the wire carries them: float32 (integers as they are)."""
    return {name: tensor.detach().float().cpu().numpy() if tensor.is_floating_point()
            else tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}


def weights_bind_address(bind: str) -> str:
    """The PUB address: the ROUTER's host, one port above it.

    :raises ValueError: if ``bind`` is not ``tcp://HOST:PORT`` with PORT in 1..65534.
    """
    parts = urlsplit(bind)
    try:
        port = parts.port
    except ValueError:  # a port out of 0..65535 or not a number
        port = None
    if parts.scheme != "tcp" or parts.hostname is None or port is None:
        raise ValueError(f"--bind {bind!r}: expected tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    if not 1 <= port <= 65534:  # 0 would pick a random port, and the PUB socket needs PORT + 1
        raise ValueError(f"--bind {bind!r}: PORT must be 1..65534 (weights go to PORT + 1)")
    return f"tcp://{parts.hostname}:{port + 1}"


def local_endpoint(bind: str) -> str:
    """Where a process on this machine reaches a learner bound to ``bind``."""
    parts = urlsplit(bind)
    if parts.hostname in ("*", "0.0.0.0", "::", None):
        return f"tcp://127.0.0.1:{parts.port}"
    return bind


class LearnerServer:
    """ROUTER + PUB sockets and the thread that serves them (a context manager)."""

    def __init__(self, bind: str, admission: Admission, actors: ActorTable,
                 settings: dict[str, dict[str, Any]], policy_version: Callable[[], int], *,
                 publish_interval: float = 2.0, heartbeat_interval: float = 1.0,
                 keys: CurveKeys | None = None, wire: WireConfig | None = None,
                 takeover_after: float = 5.0) -> None:
        self.bind = bind
        self.weights_endpoint = weights_bind_address(bind)
        self.admission = admission
        self.actors = actors
        self.settings = settings
        self.publish_interval = publish_interval
        self.heartbeat_interval = heartbeat_interval
        self.policy_version = policy_version  # the current one, read from its owner
        self.wire = wire if wire is not None else WireConfig()
        self.limits = Limits(int(self.wire.max_message_mb * (1 << 20)), self.wire.max_games_per_message,
                             self.wire.max_plies_per_game)
        self.takeover_after = takeover_after  # seconds of silence before an id may be claimed anew
        self._counters = {"messages": 0, "invalid_messages": 0, "rejected_hellos": 0,
                          "games_bytes": 0}
        # monotonic times the supervisor reads: the last games accepted, and since when the
        # learner has been wanting data (accepting) without a pause
        self.last_games_at = time.monotonic()
        self.accepting_since = time.monotonic()
        self._was_accepting = True
        self._weights: list[Frame] | None = None
        self._weights_due = threading.Event()
        self._pool_lock = threading.Lock()
        self._pool_table: tuple[float, list[str], list[float]] | None = None  # share, names, odds
        self._pool_tensors: dict[str, dict[str, np.ndarray]] = {}  # per opponent, its weights
        self._pool_queue: list[str] = []  # whose weights go out next, in order
        self._stopping = threading.Event()
        self._context = zmq.Context()
        self._authenticator: ThreadAuthenticator | None = None
        self._router = self._context.socket(zmq.ROUTER)
        self._publisher = self._context.socket(zmq.PUB)
        if keys is not None:  # only actors whose public key is in keys.authorized get in
            self._authenticator = ThreadAuthenticator(self._context)
            self._authenticator.start()
            self._authenticator.configure_curve(domain="*", location=str(keys.authorized))
            apply_keys(self._router, keys)
            apply_keys(self._publisher, keys)
        self._thread = threading.Thread(target=self._serve, name="learner-server", daemon=True)
        for sock in (self._router, self._publisher):
            sock.setsockopt(zmq.LINGER, 500)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._router.setsockopt(zmq.RCVHWM, 256)
        self._router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)  # dropped unread
        self._publisher.setsockopt(zmq.SNDHWM, 4)
        try:
            self._router.bind(bind)
            self._publisher.bind(self.weights_endpoint)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise OSError(f"cannot bind {bind} and {self.weights_endpoint}: {exc}") from exc

    def __enter__(self) -> LearnerServer:
        self._thread.start()
        logger.info("serving actors on %s, weights on %s", self.bind, self.weights_endpoint)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- called from other threads -------------------------------------------------------
    def publish(self, policy_version: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Publish ``state_dict`` as ``policy_version``'s weights (encoded here, sent by the
        server thread); ``Trainer.publish`` calls it."""
        self._weights = [WEIGHTS_TOPIC, *encode(Weights(policy_version, wire_tensors(state_dict)))]
        self._weights_due.set()

    def publish_pool(self, pool: OpponentPool, share: float) -> None:
        """Publish the opponent pool beside the weights (``Trainer.publish`` calls it after
        each new policy version): its table every time the weights go out, with one
        opponent's weights each time, a newcomer first, then each in turn."""
        opponents, probabilities = pool.snapshot()
        with self._pool_lock:
            held = self._pool_tensors
            tensors = {opponent.name: held.get(opponent.name) or wire_tensors(opponent.weights)
                       for opponent in opponents}
            fresh = [name for name in tensors if name not in held]
            self._pool_queue = fresh + [name for name in self._pool_queue
                                        if name in tensors and name not in fresh]
            self._pool_tensors = tensors
            self._pool_table = (share, list(tensors), [float(p) for p in probabilities])

    def _pool_message(self) -> list[Frame] | None:
        """The next ``pool`` message (server thread): the table and the next opponent's
        weights in turn; None before the pool was published."""
        with self._pool_lock:
            if self._pool_table is None:
                return None
            share, names, probabilities = self._pool_table
            if not self._pool_queue:
                self._pool_queue = list(names)
            name = self._pool_queue.pop(0) if self._pool_queue else ""
            tensors = self._pool_tensors.get(name, {})
        return [POOL_TOPIC, *encode(Pool(share, names, probabilities, name, tensors))]

    def close(self) -> None:
        """Tell every actor to shut down, stop the thread and close the sockets (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._router.close()
        self._publisher.close()
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()

    # --- the server thread ---------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        last_publish = 0.0
        try:
            while not self._stopping.is_set():
                if poller.poll(50):
                    for _ in range(64):
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames[0].bytes, [frame.buffer for frame in frames[1:]])
                now = time.monotonic()
                if self._weights is not None and (self._weights_due.is_set()
                                                  or now - last_publish >= self.publish_interval):
                    self._weights_due.clear()
                    self._publisher.send_multipart(self._weights, copy=False)
                    pool = self._pool_message()
                    if pool is not None:
                        self._publisher.send_multipart(pool, copy=False)
                    last_publish = now
                self.admission.flush()  # room freed by the trainer since the last round
                wanting = self.accepting()
                if wanting != self._was_accepting:
                    if wanting:
                        self.accepting_since = now
                    # said at once, not at each actor's next heartbeat or delivery: a
                    # paused actor plays as soon as the trainer takes an epoch, and a
                    # playing one stops as soon as the next is buffered, so the learner's
                    # threads (``Trainer.threads``) and the actors take turns on the cores
                    for identity in self.actors.connections():
                        self._reply(identity, Ack(wanting))
                self._was_accepting = wanting
            for identity in self.actors.connections():
                self._reply(identity, Shutdown("the learner is stopping"))
        except Exception:  # the thread must never die silently
            logger.exception("learner server thread failed")

    def _handle(self, identity: bytes, frames: list[memoryview]) -> None:
        self._counters["messages"] += 1
        sender = self.actors.sender(identity)
        try:
            message = decode(frames, self.limits)
        except ProtocolError as exc:
            self._invalid(sender, f"undecodable message: {exc}")
            return
        if isinstance(message, Hello):
            self._hello(identity, message)
        elif sender is None or getattr(message, "actor_id", sender) != sender:
            self._invalid(sender, f"{type(message).__name__} from an actor that has not said hello")
        elif isinstance(message, Heartbeat):
            self.actors.heartbeat(sender, message.policy_version, message.batches_dropped,
                                  message.steps_dropped)
            self._reply(identity, Ack(self.accepting()))
        elif isinstance(message, Games):
            self._counters["games_bytes"] += sum(frame.nbytes for frame in frames)
            self._games(sender, message)
        elif isinstance(message, Bye):
            self.actors.bye(sender)
            self.actors.disconnect(sender)
            logger.info("actor %s said bye: %s", sender, message.reason)
        else:
            self._invalid(sender, f"{type(message).__name__} is not a message actors send")

    def _hello(self, identity: bytes, hello: Hello) -> None:
        if hello.protocol_version not in ACCEPTED_VERSIONS:
            self._counters["rejected_hellos"] += 1
            reason = f"protocol version {hello.protocol_version} is not accepted"
            logger.warning("rejected actor %s: %s", hello.actor_id, reason)
            self._reply(identity, Reject(reason, ACCEPTED_VERSIONS))
            return
        refused = self.actors.connect(hello.actor_id, identity, hello.host, hello.pid,
                                      takeover_after=self.takeover_after,
                                      capacity=self.wire.max_actors)
        if refused is not None:
            self._counters["rejected_hellos"] += 1
            logger.warning("refused hello from %s: %s", hello.actor_id, refused)
            self._reply(identity, Reject(refused, ACCEPTED_VERSIONS))  # temporary: it may retry
            return
        logger.info("actor %s joined from %s (pid %d)", hello.actor_id, hello.host, hello.pid)
        self._reply(identity, Welcome(self.policy_version(), self.weights_endpoint, self.settings["model"],
                                      self.settings["selfplay"], self.heartbeat_interval,
                                      self.settings.get("search", {})))
        self._weights_due.set()  # so the newcomer gets weights now, not at the next interval

    def _games(self, sender: str, message: Games) -> None:
        try:
            games = self.admission.receive(message.games, sender)
        except InvalidGames as exc:
            self._invalid(sender, f"games rejected: {exc}")
            return
        self.last_games_at = time.monotonic()
        self.actors.games(sender, len(games), sum(game.steps for game in games))

    @property
    def counters(self) -> dict[str, int]:
        """The wire's counters (``wire_<name>`` in metrics): messages, and the games and
        steps that came over it as admission counted them."""
        counts = self.admission.counts()
        return {**self._counters, "games_accepted": counts.games_received,
                "steps_received": counts.steps_received, "games_invalid": counts.games_invalid,
                "steps_invalid": counts.steps_invalid,
                "steps_dropped_backpressure": counts.steps_dropped_backpressure}

    def accepting(self) -> bool:
        """Whether actors should keep playing (see ``Admission.accepting``)."""
        return self.admission.accepting()

    def _invalid(self, sender: str | None, reason: str) -> None:
        self._counters["invalid_messages"] += 1
        self.actors.invalid(sender)
        logger.warning("dropped a message from %s: %s", sender or "an unknown peer", reason)

    def _reply(self, identity: bytes, message: Welcome | Reject | Ack | Shutdown) -> None:
        try:
            self._router.send_multipart([identity, *encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone or not reading; it will time out and reconnect
