"""Supervision with real actor processes: kill, stop, stall, downgrade and upgrade."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from helpers import free_port_pair, wait_for

from keisei.config import load_config
from learner.app import Learner, LearnerOptions, Outcome
from learner.local_actors import LocalActors
from learner.reports import Mode
from learner.trainer import Trainer

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=64", "train.steps_per_epoch=256", "train.minibatch_size=64",
        "train.ppo_epochs=1", "train.max_policy_lag=1000", "supervisor.heartbeat_timeout=2",
        "supervisor.stall_timeout=3", "supervisor.collect_timeout=4", "run.threads=1",
        "evaluation.every_epochs=0", "display.mode=plain"]


@contextmanager
def supervised(tmp_path: Path, local_actors: int, *extra: str) -> Iterator[Learner]:
    """A learner training in a background thread, supervised, with local actors."""
    config = load_config(None, [*TINY, f"run.dir={tmp_path}", *extra])
    options = LearnerOptions(local_actors=local_actors, remote_actors=True,
                             bind=f"tcp://127.0.0.1:{free_port_pair()}", publish_interval=0.5)
    with Learner(config, options) as learner:
        thread = threading.Thread(target=learner.run, kwargs={"until_step": 10**9}, daemon=True)
        thread.start()
        try:
            yield learner
        finally:
            learner.stop.set()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the training loop did not stop"


def info(learner: Learner, actor_id: str):  # type: ignore[no-untyped-def]
    return next(item for item in learner.actors.snapshot() if item.actor_id == actor_id)


def actor_processes(bind: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if "workers.actor" in cmdline and bind in cmdline:
            found.append(process)
    return found


def test_killed_actor_is_detected_restarted_and_training_goes_on(tmp_path: Path) -> None:
    with supervised(tmp_path, 2) as learner:
        assert learner.local is not None and learner.supervisor is not None
        trainer = learner.trainer
        wait_for(lambda: trainer.epoch >= 2, 60, "two epochs with two actors")
        victim = learner.local.processes["local-0"]
        victim.send_signal(signal.SIGKILL)
        wait_for(lambda: learner.supervisor.detections >= 1, 30, "the failure to be detected")
        wait_for(lambda: learner.local.processes["local-0"].pid != victim.pid, 30, "a restart")
        epoch = trainer.epoch
        wait_for(lambda: info(learner, "local-0").games_received > 0 and trainer.epoch >= epoch + 2,
                 60, "the restarted actor to contribute and training to continue")
        assert info(learner, "local-0").restarts == 1 and learner.supervisor.restarts == 1
        assert learner.mode() is Mode.DISTRIBUTED
    buffer = trainer.buffer
    assert buffer.steps_accepted == trainer.step + buffer.size  # exact: each step once


def test_all_actors_dead_downgrades_then_a_new_actor_upgrades(tmp_path: Path) -> None:
    with supervised(tmp_path, 2, "supervisor.max_restarts=0") as learner:
        assert learner.local is not None and learner.supervisor is not None
        trainer, bind = learner.trainer, learner.options.bind
        wait_for(lambda: trainer.epoch >= 1, 60, "an epoch with actors")
        for process in learner.local.processes.values():
            process.send_signal(signal.SIGKILL)
        wait_for(lambda: learner.mode() is Mode.SEQUENTIAL, 60, "the downgrade")
        assert "no actor delivered games" in learner.supervisor.transitions[-1].cause
        epoch = trainer.epoch
        wait_for(lambda: trainer.epoch >= epoch + 2, 60, "training to go on in-process")
        assert actor_processes(bind) == []  # no actor process, and no zombie, remains
        with LocalActors(1, bind, tmp_path / "by-hand"):  # an operator starts one
            wait_for(lambda: learner.mode() is Mode.DISTRIBUTED, 60, "the upgrade")
            assert "delivering games" in learner.supervisor.transitions[-1].cause
            epoch = trainer.epoch
            wait_for(lambda: trainer.epoch >= epoch + 1, 60, "an epoch from the new actor")
        assert [t.mode for t in learner.supervisor.transitions] == ["sequential", "distributed"]


def test_exception_in_an_update_exits_cleanly_with_a_checkpoint_and_reaps_actors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, batch):  # type: ignore[no-untyped-def]
        raise FloatingPointError("injected failure in the PPO update")

    monkeypatch.setattr(Trainer, "_ppo", broken)
    options = LearnerOptions(local_actors=1, bind=f"tcp://127.0.0.1:{free_port_pair()}")
    config = load_config(None, [*TINY, f"run.dir={tmp_path}"])
    with Learner(config, options) as learner:
        assert learner.run() is Outcome.FAILED
    assert list((tmp_path / "checkpoints").glob("checkpoint-*.pt"))
    assert actor_processes(options.bind) == []
