"""Supervision with real actor processes: kill, stop, stall, downgrade and upgrade."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import zmq
from helpers import free_port_pair, wait_for

from keisei.config import load_config
from keisei.protocol import Heartbeat, Hello, decode, encode
from learner.actors import ActorTable
from learner.local_actors import LocalActors
from learner.main import ExitCode, build_parser, run
from learner.server import LearnerServer
from learner.supervisor import Supervisor
from learner.trainer import Trainer, train

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=64", "train.steps_per_epoch=256", "train.minibatch_size=64",
        "train.ppo_epochs=1", "train.max_policy_lag=1000", "supervisor.heartbeat_timeout=2",
        "supervisor.stall_timeout=3", "supervisor.collect_timeout=4", "run.threads=1",
        "evaluation.every_epochs=0"]


@dataclass
class Setup:
    trainer: Trainer
    server: LearnerServer
    actors: ActorTable
    local: LocalActors
    supervisor: Supervisor
    bind: str

    def info(self, actor_id: str):  # type: ignore[no-untyped-def]
        return next(item for item in self.actors.snapshot() if item.actor_id == actor_id)


@contextmanager
def supervised(tmp_path: Path, local_actors: int, *extra: str) -> Iterator[Setup]:
    """A learner training in a background thread, supervised, with local actors."""
    config = load_config(None, [*TINY, f"run.dir={tmp_path}", *extra])
    trainer = build_trainer_distributed(config)
    actors = ActorTable()
    bind = f"tcp://127.0.0.1:{free_port_pair()}"
    stop_training = trainer.stop
    with LearnerServer(bind, trainer.buffer, actors, config.to_dict(), publish_interval=0.5) as server, \
            LocalActors(local_actors, bind, tmp_path / "logs") as local, \
            Supervisor(config.supervisor, trainer, server, actors, local, tmp_path / "status.json") as supervisor:
        server.publish(trainer.model.state_dict(), 0)
        publish = lambda _: server.publish(trainer.model.state_dict(), trainer.policy_version)  # noqa: E731
        thread = threading.Thread(target=lambda: _train_quietly(trainer, publish), daemon=True)
        thread.start()
        try:
            yield Setup(trainer, server, actors, local, supervisor, bind)
        finally:
            stop_training.set()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the training loop did not stop"


def build_trainer_distributed(config):  # type: ignore[no-untyped-def]
    from learner.main import build_trainer

    trainer = build_trainer(config, threading.Event())
    trainer.mode = "distributed"
    return trainer


def _train_quietly(trainer: Trainer, publish) -> None:  # type: ignore[no-untyped-def]
    from learner.trainer import TrainingInterrupted

    try:
        asyncio.run(train(trainer, [publish], until_step=10**9))
    except TrainingInterrupted:
        pass


def actor_processes(bind: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "workers.actor" in cmdline and bind in cmdline:
            found.append(process)
    return found


def test_killed_actor_is_detected_restarted_and_training_goes_on(tmp_path: Path) -> None:
    with supervised(tmp_path, 2) as setup:
        wait_for(lambda: setup.trainer.epoch >= 2, 60, "two epochs with two actors")
        victim = setup.local.processes["local-0"]
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        wait_for(lambda: setup.supervisor.detections >= 1, 4, "the failure to be detected")
        assert time.monotonic() - killed_at <= 2 + 1  # heartbeat_timeout + 1 s
        wait_for(lambda: setup.local.processes["local-0"].pid != victim.pid, 10, "a restart")
        epoch = setup.trainer.epoch
        wait_for(lambda: setup.info("local-0").games_received > 0 and setup.trainer.epoch >= epoch + 2,
                 60, "the restarted actor to contribute and training to continue")
        assert setup.info("local-0").restarts == 1 and setup.supervisor.restarts == 1
        assert setup.trainer.mode == "distributed"
    buffer = setup.trainer.buffer
    assert buffer.steps_accepted == setup.trainer.step + buffer.size  # exact: each step once


def test_all_actors_dead_downgrades_then_a_new_actor_upgrades(tmp_path: Path) -> None:
    with supervised(tmp_path, 2, "supervisor.max_restarts=0") as setup:
        wait_for(lambda: setup.trainer.epoch >= 1, 60, "an epoch with actors")
        killed_at = time.monotonic()
        for process in setup.local.processes.values():
            process.send_signal(signal.SIGKILL)
        wait_for(lambda: setup.trainer.mode == "sequential", 4 + 3, "the downgrade")
        assert time.monotonic() - killed_at <= 4 + 1 + 1  # collect_timeout + 1 s (+ poll slack)
        assert "no actor delivered games" in setup.supervisor.transitions[-1].cause
        epoch = setup.trainer.epoch
        wait_for(lambda: setup.trainer.epoch >= epoch + 2, 60, "training to go on in-process")
        assert actor_processes(setup.bind) == []  # no actor process, and no zombie, remains
        with LocalActors(1, setup.bind, tmp_path / "by-hand"):  # an operator starts one
            wait_for(lambda: setup.trainer.mode == "distributed", 40, "the upgrade")
            assert "delivering games" in setup.supervisor.transitions[-1].cause
            epoch = setup.trainer.epoch
            wait_for(lambda: setup.trainer.epoch >= epoch + 1, 60, "an epoch from the new actor")
        assert [t.mode for t in setup.supervisor.transitions] == ["sequential", "distributed"]


def test_stopped_actor_is_stale_not_dead_and_recovers(tmp_path: Path) -> None:
    with supervised(tmp_path, 1) as setup:
        wait_for(lambda: setup.trainer.epoch >= 1, 60, "an epoch")
        process = setup.local.processes["local-0"]
        process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: setup.info("local-0").state == "stale", 2 + 1.5, "stale detection")
            time.sleep(1.0)
            assert setup.info("local-0").state == "stale" and setup.supervisor.restarts == 0
        finally:
            process.send_signal(signal.SIGCONT)
        wait_for(lambda: setup.info("local-0").state in ("healthy", "starting"), 10, "recovery")
        assert process.poll() is None and setup.local.processes["local-0"] is process


def test_actor_that_heartbeats_but_sends_no_games_is_failed_by_stall_timeout(tmp_path: Path) -> None:
    with supervised(tmp_path, 0) as setup:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(setup.bind)
        try:
            dealer.send_multipart(encode(Hello("idler", "h", 1, 8)))
            assert dealer.poll(5000)
            decode(dealer.recv_multipart())
            started = time.monotonic()
            deadline = started + 3 + 3
            while time.monotonic() < deadline and setup.info("idler").state != "failed":
                dealer.send_multipart(encode(Heartbeat("idler", 100.0, 0)))
                time.sleep(0.3)
            assert setup.info("idler").state == "failed"
            assert time.monotonic() - started <= 3 + 1.5  # stall_timeout + 1 s (+ poll slack)
        finally:
            dealer.close()
            context.term()


def test_exception_in_an_update_exits_cleanly_with_a_checkpoint_and_reaps_actors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, batch):  # type: ignore[no-untyped-def]
        raise FloatingPointError("injected failure in the PPO update")

    monkeypatch.setattr(Trainer, "_ppo", broken)
    bind = f"tcp://127.0.0.1:{free_port_pair()}"
    args = build_parser().parse_args(["--local-actors", "1", "--bind", bind])
    config = load_config(None, [*TINY, f"run.dir={tmp_path}", "display.mode=plain"])
    started = time.monotonic()
    assert run(config, None, args) == ExitCode.FAILURE
    assert time.monotonic() - started < 120
    assert list((tmp_path / "checkpoints").glob("checkpoint-*.pt"))
    assert actor_processes(bind) == []
