"""``keisei-actor``: plays self-play games and streams them to a learner over ZeroMQ.

Usage: ``keisei-actor --learner tcp://HOST:PORT[,tcp://HOST:PORT...] [--games G]
[--device cpu|cuda] [--actor-id NAME] [--threads N]``; the learner address may also come
from the ``KEISEI_LEARNER`` environment variable. A list names the ranks of a multi-rank
learner: the actor starts with the one its id picks (so actors spread over them) and
moves to the next whenever the one it tries does not answer.

Lifecycle: connect a DEALER to the learner's ROUTER and say ``hello``; the ``welcome``
gives the network and self-play settings and the weights endpoint (a PUB socket); wait
for weights; then play with ``keisei.selfplay.Collector`` (the same collector the
learner runs in-process), send finished games in batches, heartbeat every second,
and switch to new weights as they arrive. With the learner's opponent pool
(``pool.share``) the actor plays that share of its new games against the pool's
opponents, drawn by the learner's PFSP probabilities, as their weights arrive
(``keisei.pool.MirroredPool``). If the learner falls silent the actor says
so, drops its sockets and reconnects with exponential backoff, never spinning while it
waits. ``shutdown``, SIGTERM and SIGINT end it cleanly, with a ``bye``; so does a
learner silent for ``--give-up-after`` seconds (``KEISEI_GIVE_UP_AFTER``), if given.
Exit codes: 0 told to stop by the learner, or given up on it; 2 bad arguments or refused
by the learner; 130 stopped by SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from types import FrameType
from urllib.parse import urlsplit

import psutil
import torch
import zmq

from keisei.cli import add_version
from keisei.config import ConfigError, ModelConfig, SelfPlayConfig, build_config
from keisei.encoding import NUM_ACTIONS, NUM_PLANES, encode_observation
from keisei.errors import KeiseiError
from keisei.model import build_model
from keisei.pool import MirroredPool
from keisei.protocol import (
    POOL_TOPIC,
    PROTOCOL_VERSION,
    WEIGHTS_TOPIC,
    Ack,
    Bye,
    CurveKeys,
    Games,
    Heartbeat,
    Hello,
    Pool,
    ProtocolError,
    Reject,
    Shutdown,
    Weights,
    Welcome,
    apply_keys,
    decode,
    encode,
    load_keys,
)
from keisei.records import GameRecord
from keisei.selfplay import Collector
from keisei.shogi import Game

logger = logging.getLogger("keisei.actor")

HEARTBEAT_SECONDS = 1.0
"""Between heartbeats until a ``welcome`` says the learner's interval."""
LEARNER_TIMEOUT_SECONDS = 10.0
HANDSHAKE_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
EXIT_SIGNALLED = 130


class LearnerRejected(KeiseiError):
    """The learner refused this actor (a protocol version it does not accept)."""


class Actor:
    """One actor process: its sockets, its collector, and the loop that runs them."""

    def __init__(self, learner: str, actor_id: str, games: int | None, device: str,
                 precision: str, max_pending_batches: int, stop: threading.Event,
                 keys: CurveKeys | None = None, give_up_after: float | None = None) -> None:
        self.endpoints = split_endpoints(learner)
        # a stable pick from the id: actors spread evenly over a multi-rank learner's ranks
        self.endpoint_index = first_endpoint(actor_id, len(self.endpoints))
        self.learner = self.endpoints[self.endpoint_index]
        self.give_up_after = give_up_after  # seconds without a word from the learner; None: never
        self.keys = keys
        self.actor_id = actor_id
        self.games_override = games
        self.device = device
        self.precision = precision
        self.stop = stop
        self.context = zmq.Context()
        self.dealer: zmq.Socket[bytes] | None = None
        self.subscriber: zmq.Socket[bytes] | None = None
        self.collector: Collector | None = None
        self.policy_version = -1  # of the weights in the collector's model; -1 before any
        self.finished: list[GameRecord] = []
        self.outbox: deque[Games] = deque()
        self.max_pending_batches = max_pending_batches
        self.games_sent = self.batches_dropped = self.steps_dropped = 0
        self.last_heard = self.last_heartbeat = self.last_flush = time.monotonic()
        self.heartbeat_interval = HEARTBEAT_SECONDS  # the learner's, once welcomed
        self.steps_at_heartbeat = 0
        self.accepting = True  # the learner's back-pressure signal, from its acks
        self.pool = MirroredPool()  # the learner's opponent pool, as far as it has arrived
        self.pool_share = 0.0
        self.model_config: ModelConfig | None = None

    # --- the sink the collector writes to (records only: nothing here needs planes) ------
    def put_record(self, record: GameRecord) -> None:
        self.finished.append(record)

    # --- lifecycle -----------------------------------------------------------------------
    def run(self) -> None:
        """Connect (and reconnect) and play until stopped, or until the learner has been
        silent for ``give_up_after`` seconds.

        :raises LearnerRejected: if the learner refuses this actor.
        """
        backoff = 1.0
        while not self.stop.is_set():
            welcome = self._connect()
            if welcome is None:
                silent = time.monotonic() - self.last_heard
                if self.give_up_after is not None and silent >= self.give_up_after:
                    logger.warning("learner %s silent for %.0f s (--give-up-after %g): stopping",
                                   self.learner, silent, self.give_up_after)
                    return
                if len(self.endpoints) > 1:  # another rank, then
                    self.endpoint_index = (self.endpoint_index + 1) % len(self.endpoints)
                    logger.warning("learner %s does not answer; trying %s in %.0f s", self.learner,
                                   self.endpoints[self.endpoint_index], backoff)
                    self.learner = self.endpoints[self.endpoint_index]
                else:
                    logger.warning("learner %s does not answer; retrying in %.0f s", self.learner,
                                   backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 1.0
            self._play(welcome)
            self._close_sockets()

    def _connect(self) -> Welcome | None:
        """Say hello on a fresh DEALER; return the welcome, or None when nobody answers."""
        self._close_sockets()
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 64)
        if self.keys is not None:
            apply_keys(dealer, self.keys)
        dealer.connect(self.learner)
        self.dealer = dealer
        self._send(Hello(self.actor_id, socket.gethostname(), os.getpid()))
        deadline = time.monotonic() + HANDSHAKE_SECONDS
        while time.monotonic() < deadline and not self.stop.is_set():
            if dealer.poll(200):
                message = self._receive()
                if isinstance(message, Welcome):
                    return message
                if isinstance(message, Reject) and PROTOCOL_VERSION in message.accepted_versions:
                    # not this actor's protocol: a refusal for now (its id is held, the
                    # table is full), so it tries again after the backoff
                    logger.warning("learner %s refused this actor for now: %s", self.learner,
                                   message.reason)
                    return None
                if isinstance(message, Reject):
                    raise LearnerRejected(f"{message.reason} (accepted versions: "
                                          f"{', '.join(map(str, message.accepted_versions))})")
        return None

    def _play(self, welcome: Welcome) -> None:
        """Subscribe to weights, then collect until stopped or the learner goes silent."""
        try:
            config = build_config([{"model": welcome.model, "selfplay": welcome.selfplay,
                                    "search": welcome.search}])
        except ConfigError as exc:
            raise LearnerRejected(f"the learner sent settings this actor cannot use: {exc}") from exc
        selfplay = config.selfplay
        if self.games_override:
            selfplay = SelfPlayConfig(**{**vars(selfplay), "games": self.games_override})
        check_memory(config.model, selfplay)
        subscriber = self.context.socket(zmq.SUB)
        subscriber.setsockopt(zmq.LINGER, 0)
        subscriber.setsockopt(zmq.RCVHWM, 4)
        subscriber.setsockopt(zmq.SUBSCRIBE, WEIGHTS_TOPIC)
        subscriber.setsockopt(zmq.SUBSCRIBE, POOL_TOPIC)
        if self.keys is not None:
            apply_keys(subscriber, self.keys)
        weights_endpoint = self._weights_endpoint(welcome.weights_endpoint)
        subscriber.connect(weights_endpoint)
        self.subscriber = subscriber
        if self.collector is None or self.collector.config != selfplay \
                or self.collector.search_config != config.search:
            model = build_model(config.model).to(self.device)
            self.collector = Collector(model, selfplay, self, device=self.device,
                                       seed=int.from_bytes(os.urandom(4), "little"),
                                       precision=self.precision, search=config.search)
            self.policy_version = -1  # no weights yet
        # this learner's pool (another learner's opponents of the same names are others)
        self.pool, self.pool_share, self.model_config = MirroredPool(), 0.0, config.model
        self.collector.play_pool(self.pool, 0.0, lambda: build_model(config.model))
        self.heartbeat_interval = welcome.heartbeat_interval
        logger.info("welcomed by %s: policy version %d, %d games, weights from %s, a heartbeat "
                    "every %.2g s", self.learner, welcome.policy_version, selfplay.games,
                    weights_endpoint, welcome.heartbeat_interval)
        self.last_heard = time.monotonic()
        assert self.dealer is not None
        while not self.stop.is_set():
            self._service()
            if time.monotonic() - self.last_heard > LEARNER_TIMEOUT_SECONDS:
                logger.warning("learner silent for %.0f s; reconnecting", LEARNER_TIMEOUT_SECONDS)
                return
            if self.policy_version < 0:
                subscriber.poll(200)  # waiting for the first weights: sleep in poll, not spin
                continue
            if not self.accepting:
                self.dealer.poll(200)  # the learner has enough data: wait, leave it the CPU
                continue
            self.collector.step(self.policy_version)
        self._say_goodbye("stopped")

    def _weights_endpoint(self, endpoint: str) -> str:
        """The PUB address, with the learner's host when it bound a wildcard address."""
        published = urlsplit(endpoint)
        if published.hostname in (None, "", "0.0.0.0", "*"):
            return f"tcp://{urlsplit(self.learner).hostname}:{published.port}"
        return endpoint

    # --- sockets -------------------------------------------------------------------------
    def _service(self) -> None:
        """Everything between two self-play steps; never blocks."""
        assert self.dealer is not None and self.subscriber is not None and self.collector is not None
        latest: Weights | None = None
        while self.subscriber.poll(0):
            frames = self.subscriber.recv_multipart(copy=False)
            try:
                message = decode([frame.buffer for frame in frames[1:]])
            except ProtocolError as exc:
                logger.error("ignored bad weights message: %s", exc)
                continue
            if isinstance(message, Weights):
                latest = message
            elif isinstance(message, Pool):
                self._update_pool(message)
        if latest is not None and latest.policy_version != self.policy_version:
            self._load_weights(latest)
            # New weights mean an epoch was consumed, not that the next one is short: a
            # paused actor asks at once (the ack says) instead of playing on regardless.
            self._heartbeat(time.monotonic())
        while self.dealer.poll(0):
            reply = self._receive()
            if isinstance(reply, Ack):
                self.accepting = reply.accepting
            elif isinstance(reply, Shutdown):
                logger.info("learner asked to shut down: %s", reply.reason or "no reason given")
                self.stop.set()
        now = time.monotonic()
        if now - self.last_heartbeat >= self.heartbeat_interval:
            self._heartbeat(now)
        if self.finished and (now - self.last_flush >= 0.5 or len(self.finished) >= 64):
            self.outbox.append(Games(self.actor_id, self.finished))
            self.finished = []
            self.last_flush = now
        self._drain_outbox()

    def _update_pool(self, message: Pool) -> None:
        """Take the learner's pool table, and an opponent's weights if new here and they fit
        the network (otherwise say why and play without that opponent)."""
        assert self.collector is not None and self.model_config is not None
        weights = None
        if message.name and message.name not in self.pool.names():
            weights = {name: torch.from_numpy(array.copy()) for name, array in message.tensors.items()}
            try:
                build_model(self.model_config).load_state_dict(weights, strict=True)
            except (RuntimeError, ValueError) as exc:
                logger.error("pool opponent %s's weights do not fit this network: %s", message.name, exc)
                weights = None
        self.pool.update(message.names, message.probabilities, message.name, weights)
        if message.share != self.pool_share:
            self.pool_share = message.share
            model = self.model_config
            self.collector.play_pool(self.pool, message.share, lambda: build_model(model))
            logger.info("playing %.0f%% of new games against the learner's opponent pool",
                        100 * message.share)

    def _load_weights(self, weights: Weights) -> bool:
        """Load ``weights`` if they fit the network and play: finite outputs on the start
        position. Otherwise keep the current ones (and say why); return whether loaded."""
        assert self.collector is not None
        model = self.collector.model
        previous = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        try:
            state = {name: torch.from_numpy(array.copy()) for name, array in weights.tensors.items()}
            model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError) as exc:
            logger.error("weights for policy version %d do not fit this network: %s",
                         weights.policy_version, exc)
            return False
        model.eval()
        with torch.inference_mode():
            logits, values = model(torch.from_numpy(encode_observation(Game().board))[None].to(self.device))
        if not (bool(torch.isfinite(logits).all()) and bool(torch.isfinite(values).all())):
            model.load_state_dict(previous)
            logger.error("ignored weights for policy version %d: the network gives non-finite "
                         "outputs with them", weights.policy_version)
            return False
        self.policy_version = weights.policy_version
        return True

    def _drain_outbox(self) -> None:
        """Send queued game batches without blocking; keep at most max_pending_batches."""
        while self.outbox:
            try:
                self._send(self.outbox[0], flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            batch = self.outbox.popleft()
            self.games_sent += len(batch.games)
        while len(self.outbox) > self.max_pending_batches:
            dropped = self.outbox.popleft()
            self.batches_dropped += 1
            self.steps_dropped += sum(game.length for game in dropped.games)
            logger.warning("learner not keeping up: dropped a batch of %d games (%d batches so far)",
                           len(dropped.games), self.batches_dropped)

    def _heartbeat(self, now: float) -> None:
        assert self.collector is not None
        steps = self.collector.stats.steps
        rate = (steps - self.steps_at_heartbeat) / max(now - self.last_heartbeat, 1e-6)
        self.steps_at_heartbeat, self.last_heartbeat = steps, now
        try:
            self._send(Heartbeat(self.actor_id, rate, self.policy_version,
                                 self.batches_dropped, self.steps_dropped),
                       flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _send(self, message: Hello | Heartbeat | Games | Bye, flags: int = 0) -> None:
        assert self.dealer is not None
        self.dealer.send_multipart(encode(message), flags=flags, copy=False)

    def _receive(self) -> Welcome | Reject | Ack | Shutdown | None:
        """The learner's next message (it must be waiting); None if it is not one it sends."""
        assert self.dealer is not None
        frames = self.dealer.recv_multipart()
        self.last_heard = time.monotonic()
        try:
            message = decode(frames)
        except ProtocolError as exc:
            logger.error("ignored bad message from the learner: %s", exc)
            return None
        if not isinstance(message, Ack | Welcome | Reject | Shutdown):
            logger.error("ignored unexpected %s message from the learner", type(message).__name__)
            return None
        return message

    def _say_goodbye(self, reason: str) -> None:
        if self.dealer is None:
            return
        self._drain_outbox()
        try:
            self._send(Bye(self.actor_id, reason), flags=zmq.NOBLOCK)
        except zmq.Again:
            return
        self.dealer.setsockopt(zmq.LINGER, 1000)  # let the bye (and queued games) leave

    def _close_sockets(self) -> None:
        for sock in (self.dealer, self.subscriber):
            if sock is not None:
                sock.close()
        self.dealer = self.subscriber = None

    def close(self) -> None:
        self._close_sockets()
        self.context.term()


BYTES_PER_PLY = 19  # what the collector keeps per ply of each game for a wire record


def check_memory(model: ModelConfig, selfplay: SelfPlayConfig) -> None:
    """Refuse settings this machine cannot hold (the collector preallocates per game).

    :raises LearnerRejected: naming what is needed and what is available.
    """
    channels = model.channels  # the convolutions' weights dominate the parameter count
    parameters = 9 * channels * (2 * model.blocks * channels + NUM_PLANES) + NUM_ACTIONS * channels
    needed = selfplay.games * selfplay.max_plies * BYTES_PER_PLY + 4 * parameters * 4
    available = psutil.virtual_memory().available
    if needed > available // 2:
        raise LearnerRejected(f"the learner's settings ({selfplay.games} games of up to "
                              f"{selfplay.max_plies} plies, a {model.blocks}x{model.channels} network) "
                              f"need about {needed / 2**30:.1f} GiB; this machine has "
                              f"{available / 2**30:.1f} GiB available (pass --games to play fewer)")


def split_endpoints(learner: str) -> list[str]:
    """The addresses of ``--learner``: one, or a comma-separated list (a multi-rank learner)."""
    return [item.strip() for item in learner.split(",") if item.strip()]


def first_endpoint(actor_id: str, count: int) -> int:
    """Which of ``count`` rank endpoints an actor tries first: a hash of its id, so many
    actors spread evenly and one keeps its rank across restarts."""
    return zlib.crc32(actor_id.encode()) % count


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="keisei-actor", description="Keisei self-play actor.")
    add_version(parser)
    parser.add_argument("--learner", default=os.environ.get("KEISEI_LEARNER"),
                        help="learner address, tcp://HOST:PORT, or a comma-separated list of "
                             "a multi-rank learner's ranks (default: $KEISEI_LEARNER)")
    parser.add_argument("--games", type=int, default=None,
                        help="games in lock-step (default: the learner's selfplay.games)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--actor-id", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--nice", type=int, default=os.environ.get("KEISEI_ACTOR_NICE", "0"),
                        metavar="N",
                        help="lower this actor's CPU priority by N (0..19; default: "
                             "$KEISEI_ACTOR_NICE, else 0). On a machine it shares with the "
                             "learner, the learner's update then comes first and the actor "
                             "plays in the CPU time the update leaves idle; keisei-learner "
                             "--local-actors starts its actors with 19")
    parser.add_argument("--curve-keys", default=os.environ.get("KEISEI_CURVE_KEYS"), metavar="DIR",
                        help="authenticate with CurveZMQ: DIR holds actor.key_secret and the "
                             "learner's server.key, made by keisei-keys (default: $KEISEI_CURVE_KEYS)")
    parser.add_argument("--max-pending-batches", type=int, default=32,
                        help="game batches kept while the learner cannot receive")
    parser.add_argument("--give-up-after", type=float, metavar="SECONDS",
                        default=os.environ.get("KEISEI_GIVE_UP_AFTER"),
                        help="exit (with 0) when no learner has answered for this long, e.g. one "
                             "that finished or stopped for good (default: $KEISEI_GIVE_UP_AFTER, "
                             "else keep retrying)")
    args = parser.parse_args(argv)
    problems = []
    if args.give_up_after is not None and not args.give_up_after > 0:
        problems.append(f"--give-up-after {args.give_up_after}: expected a number of seconds > 0")
    endpoints = split_endpoints(args.learner or "")
    if not endpoints or any(_bad_endpoint(item) for item in endpoints):
        problems.append(f"--learner {args.learner!r}: expected tcp://HOST:PORT, or a "
                        "comma-separated list of them")
    if args.games is not None and not 1 <= args.games <= 4096:
        problems.append(f"--games {args.games}: expected 1..4096")
    if not 0 <= args.nice <= 19:
        problems.append(f"--nice {args.nice}: expected 0..19")
    if args.threads < 1 or args.max_pending_batches < 1:
        problems.append("--threads and --max-pending-batches must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device {args.device}: CUDA is not available here")
    if problems:
        parser.error("; ".join(problems))
    return args


def _bad_endpoint(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    try:
        return parts.scheme != "tcp" or not parts.hostname or parts.port is None
    except ValueError:  # a port that is not a number
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.nice:
        os.nice(args.nice)
    stop = threading.Event()
    signalled: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s: stopping", signal.Signals(signum).name)
        signalled.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        keys = load_keys(args.curve_keys, "actor") if args.curve_keys else None
    except ProtocolError as exc:
        logger.error("%s", exc)
        return 2
    actor = Actor(args.learner, args.actor_id, args.games, args.device, args.precision,
                  args.max_pending_batches, stop, keys, args.give_up_after)
    try:
        actor.run()
    except LearnerRejected as exc:
        logger.error("learner %s rejected this actor: %s", args.learner, exc)
        return 2
    finally:
        actor.close()
        # The exit is decided. Python puts SIGTERM's default action back while the
        # interpreter shuts down, so a SIGTERM then (Compose stopping the stack as the
        # learner exits, just after the learner's shutdown reached this actor) would kill
        # it with 143 instead of its code; an ignored signal stays ignored through that.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logger.info("actor %s stopped after sending %d games", args.actor_id, actor.games_sent)
    # 130 for a signal, as the learner: Docker's on-failure policy then brings back actors
    # that a host shutdown stopped, and leaves those that the learner's shutdown ended
    return EXIT_SIGNALLED if signalled else 0


if __name__ == "__main__":
    sys.exit(main())
