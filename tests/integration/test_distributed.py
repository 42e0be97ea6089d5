"""Learner and real keisei-actor processes over real sockets on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import numpy as np
import psutil
import pytest
import zmq
from helpers import DISTRIBUTED_FIELDS, EPOCH_FIELDS, LogTail, free_port_pair, log_tail, wait_for

from keisei.config import load_config
from keisei.protocol import PROTOCOL_VERSION, Ack, Games, Hello, Reject, Welcome, decode, encode
from keisei.records import GameRecord
from keisei.selfplay import Collector
from learner.actors import ActorState
from learner.app import Learner, LearnerOptions, RunOutcome
from learner.local_actors import LocalActors

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=64", "train.steps_per_epoch=256", "train.minibatch_size=64",
        "train.ppo_passes=1", "train.max_policy_lag=1000", "evaluation.every_epochs=0",
        "display.mode=plain", "supervisor.collect_timeout=600"]


class Run:
    """A learner with remote actors, trained a few epochs at a time from the test."""

    def __init__(self, learner: Learner, log: LogTail) -> None:
        self.learner = learner
        self.log = log
        self.trainer, self.actors, self.bind = learner.trainer, learner.actors, learner.options.bind
        assert learner.server is not None
        self.server = learner.server

    def train_epochs(self, epochs: int, timeout: float = 120.0, callbacks: tuple = ()) -> None:
        """Run the learner for ``epochs`` more epochs; fail rather than hang."""
        until = self.trainer.step + epochs * self.trainer.config.train.steps_per_epoch
        timer = threading.Timer(timeout, self.learner.stop.set)
        timer.start()
        try:
            outcome = self.learner.run(until_step=until, callbacks=callbacks)
        finally:
            timer.cancel()
        assert outcome is RunOutcome.FINISHED, f"{outcome} (after {timeout} s?)\n{self.log.text()}"

    def actor(self, actor_id: str):  # type: ignore[no-untyped-def]
        return next(info for info in self.actors.snapshot() if info.actor_id == actor_id)


@contextmanager
def learner(tmp_path: Path, *extra: str) -> Iterator[Run]:
    config = load_config(None, [*TINY, f"run.dir={tmp_path / 'run'}", *extra])
    options = LearnerOptions(remote_actors=True, bind=f"tcp://127.0.0.1:{free_port_pair()}",
                             threads=1, publish_interval=0.5)
    with log_tail() as log, Learner(config, options) as running:
        yield Run(running, log)


def test_two_actors_train_and_every_step_is_counted_once(tmp_path: Path) -> None:
    with learner(tmp_path) as run:
        with LocalActors(2, run.bind, tmp_path / "logs") as local:
            run.train_epochs(3)
            # Actors play only while the learner wants data (back-pressure), and one may
            # still be starting while the other fills the first epochs: train on, for up
            # to a minute, until both have delivered games.
            extra, deadline = 0, time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                    run.actor(name).games_received > 0 for name in ("local-0", "local-1")):
                run.train_epochs(1)
                extra += 1
            wait_for(lambda: all(run.actor(name).policy_version >= 2 for name in ("local-0", "local-1")),
                     15, "both actors to report the new weights")
            # the update comes first on a shared machine (``learner.local_actors.ACTOR_NICE``)
            assert all(psutil.Process(process.pid).nice() == 19 for process in local.processes.values())
        wait_for(lambda: all(info.state is ActorState.STOPPED for info in run.actors.snapshot()), 15,
                 "both actors to say bye")
        assert all(process.returncode == 130 for process in local.processes.values())  # SIGTERM, clean
        buffer, counters = run.trainer.buffer, run.server.counters
        epochs = run.trainer.policy_version
        assert epochs == 3 + extra and run.trainer.step == epochs * 256
        assert buffer.steps_accepted == run.trainer.step + buffer.size  # trained or still held
        assert counters["steps_received"] == (buffer.steps_accepted + buffer.steps_dropped_stale
                                              + counters["steps_dropped_backpressure"]
                                              + run.trainer.admission.counts().steps_pending)
        table = run.actors.snapshot()
        assert sum(info.steps_received for info in table) == counters["steps_received"]
        assert all(info.games_received > 0 for info in table)
        assert counters["invalid_messages"] == 0
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == epochs
        last = json.loads(lines[-1])
        assert set(last) == EPOCH_FIELDS | DISTRIBUTED_FIELDS | {"ratings_skipped", "ledger"}
        # what arrived, paused or not (``learner.actors``), and the total is the actors' sum
        assert last["actor_steps_per_second"] > 0
        assert last["actor_steps_per_second"] == pytest.approx(
            sum(actor["steps_per_second"] for actor in last["actors"]), abs=0.2)
        ledger = run.learner.ledger()
        assert ledger.balanced and ledger.trained == run.trainer.step and ledger.carried == 0
        assert ledger.received == counters["steps_received"]


def test_late_and_restarted_actors_get_current_weights_and_contribute(tmp_path: Path) -> None:
    with learner(tmp_path) as run, LocalActors(1, run.bind, tmp_path / "logs") as local:
        run.train_epochs(2)
        local.start("late")
        wait_for(lambda: run.actors.known("late") and run.actor("late").policy_version == 2, 20,
                 "the late actor to load policy version 2")
        first = local.processes["local-0"]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        local.start("local-0")
        run.train_epochs(2)
        wait_for(lambda: run.actor("local-0").policy_version == 4 and run.actor("late").policy_version == 4,
                 20, "both actors to load policy version 4")
        # Actors play only while the learner wants data (back-pressure), so a newcomer's
        # first games can take a few epochs to finish; bounded, not timed.
        for _ in range(10):
            if run.actor("late").games_received > 0:
                break
            run.train_epochs(1)
        assert run.actor("late").games_received > 0
        before_restart = run.actor("local-0").steps_received
        run.train_epochs(1)
        assert run.actor("local-0").steps_received >= before_restart


def send(dealer: zmq.Socket, frames: list) -> None:
    dealer.send_multipart([bytes(frame) for frame in frames])


def test_malformed_traffic_is_dropped_and_counted_while_training_goes_on(tmp_path: Path) -> None:
    with learner(tmp_path) as run:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(run.bind)
        try:
            old = {"type": "hello", "version": 3, "actor_id": "old", "host": "h", "pid": 1,
                   "protocol_version": 3}  # an actor of protocol 3 (games without pool fields)
            send(dealer, [msgpack.packb(old)])
            assert dealer.poll(5000)
            reject = decode(dealer.recv_multipart())
            assert isinstance(reject, Reject) and reject.accepted_versions == (PROTOCOL_VERSION,)
            assert reject.reason == "protocol version 3 is not accepted"
            send(dealer, [b"\x00garbage"])  # not msgpack, before any hello
            send(dealer, encode(Hello("rogue", "h", 1)))
            assert dealer.poll(5000) and isinstance(decode(dealer.recv_multipart()), Welcome)
            with LocalActors(1, run.bind, tmp_path / "logs"):
                run.train_epochs(1)
            records: list[GameRecord] = []  # a real game, sent as if by the rogue actor
            sink = type("Sink", (), {"put_record": lambda self, record: records.append(record)})()
            good = Collector(run.trainer.model, run.trainer.config.selfplay, sink)
            while not records:
                good.step(run.trainer.policy_version)
            frames = [bytes(f) for f in encode(Games("rogue", [records[0]]))]
            nan_values = np.frombuffer(frames[3], np.float32).copy()
            nan_values[0] = np.nan
            wide = np.frombuffer(frames[1], np.int32).astype(np.int64).tobytes()
            illegal = np.frombuffer(frames[1], np.int32).copy()
            illegal[1] = illegal[0]
            invalid_before = run.server.counters["invalid_messages"]
            for bad in ([frames[0], frames[1], frames[2], nan_values.tobytes(), frames[4]],
                        [frames[0], wide, *frames[2:]],
                        [frames[0], illegal.tobytes(), *frames[2:]],
                        [frames[0], *frames[1:4]]):
                send(dealer, bad)
            wait_for(lambda: run.server.counters["invalid_messages"] >= invalid_before + 4, 10,
                     "the four bad games messages to be counted")
            assert run.server.counters["games_invalid"] >= 1
            assert run.actor("rogue").invalid_messages >= 4
            with LocalActors(1, run.bind, tmp_path / "logs2"):
                run.train_epochs(1)  # still training
            assert run.trainer.epoch == 2
            ledger = run.learner.ledger()
            assert ledger.balanced and ledger.dropped["invalid"] > 0, ledger
        finally:
            dealer.close()
            context.term()


def hello(dealer: zmq.Socket, actor_id: str) -> object:
    send(dealer, encode(Hello(actor_id, "h", 1)))
    assert dealer.poll(5000), f"no answer to the hello of {actor_id}"
    return decode(dealer.recv_multipart())


def test_back_pressure_is_said_to_every_actor_the_moment_it_changes(tmp_path: Path) -> None:
    """Not at each actor's next heartbeat or delivery: a paused actor plays as soon as an
    epoch is taken, and stops as soon as the next is buffered."""
    with learner(tmp_path) as run:
        wanting = [True]
        run.trainer.admission.accepting = lambda: wanting[0]  # type: ignore[method-assign]
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(run.bind)
        try:
            assert isinstance(hello(dealer, "quiet"), Welcome)  # it sends nothing after this
            for state in (False, True, False):
                wanting[0] = state
                assert dealer.poll(2000), f"no ack when accepting became {state}"
                ack = decode(dealer.recv_multipart())
                assert isinstance(ack, Ack) and ack.accepting is state
            assert not dealer.poll(300)  # nothing changed: nothing said
        finally:
            dealer.close()
            context.term()


def test_floods_hijacks_oversized_and_future_messages_are_refused(tmp_path: Path) -> None:
    with learner(tmp_path, "wire.max_actors=16", "wire.max_message_mb=1") as run, \
            LocalActors(1, run.bind, tmp_path / "logs"):
        run.train_epochs(1)
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(run.bind)
        try:
            hijack = hello(dealer, "local-0")  # the id of a live local actor
            assert isinstance(hijack, Reject) and "live connection" in hijack.reason
            flooder = context.socket(zmq.DEALER)
            flooder.setsockopt(zmq.LINGER, 0)
            flooder.connect(run.bind)
            for index in range(300):  # one socket, a new id each time
                send(flooder, encode(Hello(f"flood-{index}", "h", 1)))
            wait_for(lambda: run.server.counters["rejected_hellos"] >= 300 - 16, 20,
                     "the flood to be refused past the table's 16 entries")
            flooder.close()
            assert len(run.actors.snapshot()) <= 16
            future = hello(dealer, "time-traveller")
            assert isinstance(future, Welcome)
            records: list[GameRecord] = []
            sink = type("Sink", (), {"put_record": lambda self, record: records.append(record)})()
            collector = Collector(run.trainer.model, run.trainer.config.selfplay, sink)
            while not records:
                collector.step(2**31 - 1)  # stamped with a version the learner never had
            invalid = run.server.counters["games_invalid"]
            send(dealer, encode(Games("time-traveller", records[:1])))
            wait_for(lambda: run.server.counters["games_invalid"] > invalid, 10,
                     "the games from the future to be refused")
            played: list[GameRecord] = []
            honest = Collector(run.trainer.model, run.trainer.config.selfplay,
                               type("Sink", (), {"put_record": lambda self, r: played.append(r)})())
            while len(played) < 6:
                honest.step(run.trainer.policy_version)
            hostile = [dataclasses.replace(record, log_probs=np.full(record.length, -100.0, np.float32))
                       for record in played[:6]]  # legal games whose log-probs claim odds of e^-100
            accepted = run.server.counters["games_accepted"]
            send(dealer, encode(Games("time-traveller", hostile)))
            wait_for(lambda: run.server.counters["games_accepted"] >= accepted + 6, 10,
                     "the six hostile games to pass validation")
            run.train_epochs(2)  # trained on without a crash or a dropped epoch
            assert run.trainer.steps_dropped_non_finite == 0
            # The local actor's heartbeats and games go on meanwhile, so the number of
            # messages read grows; a message that was read would be counted invalid.
            invalid_messages = run.server.counters["invalid_messages"]
            send(dealer, [b"\x00" * (2 << 20)])  # 2 MiB: over wire.max_message_mb
            run.train_epochs(1)  # still training
            assert run.server.counters["invalid_messages"] == invalid_messages  # dropped unread
        finally:
            dealer.close()
            context.term()
        line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
        metrics = json.loads(line)
        assert len(metrics["actors"]) <= 16 and len(line) < 20_000
        assert sum(metrics["actor_states"].values()) == len(run.actors.snapshot())
        assert run.learner.ledger().balanced


@pytest.mark.parametrize("plays", [False, True])
def test_an_actor_sends_search_targets_that_the_learner_trains_on(tmp_path: Path,
                                                                  plays: bool) -> None:
    """With ``selfplay.search_plays`` (sent in the ``welcome``) the actor plays the
    search's moves, and the learner's replay marks those plies forced."""
    with learner(tmp_path, "selfplay.search_share=0.25", "selfplay.search_visits=4",
                 "search.gumbel_actions=4", f"selfplay.search_plays={str(plays).lower()}") as run:
        admitted: list = []
        receive = run.trainer.admission.receive

        def keep(records, source):  # type: ignore[no-untyped-def]
            games = receive(records, source)
            admitted.extend(games)
            return games

        run.trainer.admission.receive = keep  # type: ignore[method-assign]
        reports: list = []
        with LocalActors(1, run.bind, tmp_path / "logs"):
            run.train_epochs(2, callbacks=(reports.append,))
        assert run.actor("local-0").games_received > 0
        assert run.server.counters["games_invalid"] == 0
        searched_forced = [game.forced_plies()[game.target_plies] for game in admitted]
        marked = np.concatenate(searched_forced)
        assert len(marked) > 0
        # without it, only a single legal move or a mate marks a searched ply
        assert marked.all() if plays else marked.mean() < 0.5
        from_actor = [report for report in reports if report.collect.collected_steps == 0]
        assert from_actor, "no epoch came from the actor alone"
        targets = sum(report.update.search_targets for report in from_actor)
        share = targets / (len(from_actor) * run.trainer.config.train.steps_per_epoch)
        assert 0 < share < 0.6  # about a quarter of the plies: 0 or 0.6 is 1 in 10^4 or less
        assert all(np.isfinite(report.update.search_loss) for report in from_actor
                   if report.update.search_targets)


def test_an_actor_given_rank_endpoints_moves_on_from_one_that_does_not_answer(
        tmp_path: Path) -> None:
    """``--learner A,B`` (a multi-rank learner's ranks): an actor whose hash picks A, where
    nothing answers, joins B and plays there."""
    from workers.actor import first_endpoint

    actor_id = next(f"ranked-{index}" for index in range(100)
                    if first_endpoint(f"ranked-{index}", 2) == 0)
    with learner(tmp_path) as run:
        silent = f"tcp://127.0.0.1:{free_port_pair()}"
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.actor", "--learner", f"{silent},{run.bind}",
             "--actor-id", actor_id], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=Path(__file__).resolve().parents[2])
        try:
            wait_for(lambda: run.actors.known(actor_id), 60, "the actor to join the second rank")
            run.train_epochs(1)
            wait_for(lambda: run.actor(actor_id).steps_received > 0, 60, "its games")
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0]
        assert f"learner {silent} does not answer; trying {run.bind}" in output, output[-3000:]
