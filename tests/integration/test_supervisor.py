"""Supervision with real actor processes: kill, stop, stall, downgrade and upgrade."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from helpers import Training, free_port_pair, metrics_lines, training

from keisei.config import load_config
from learner.app import Learner, LearnerOptions, RunOutcome
from learner.local_actors import LocalActors
from learner.reports import Mode
from learner.trainer import Trainer

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=64", "train.steps_per_epoch=256", "train.minibatch_size=64",
        "train.ppo_passes=1", "train.max_policy_lag=1000", "supervisor.heartbeat_timeout=2",
        "supervisor.stall_timeout=3", "supervisor.collect_timeout=4", "run.threads=1",
        "evaluation.every_epochs=0", "display.mode=plain"]


@contextmanager
def supervised(tmp_path: Path, local_actors: int, *extra: str) -> Iterator[Training]:
    """A learner training in a background thread, supervised, with local actors; it must
    end ``INTERRUPTED`` (stopped by the test), never ``FAILED``."""
    config = load_config(None, [*TINY, f"run.dir={tmp_path}", *extra])
    options = LearnerOptions(local_actors=local_actors, remote_actors=True,
                             bind=f"tcp://127.0.0.1:{free_port_pair()}", publish_interval=0.5)
    with Learner(config, options) as learner, training(learner) as run:
        yield run
    assert run.outcome is RunOutcome.INTERRUPTED, run.context()
    status = json.loads((tmp_path / "status.json").read_text())  # the final one, at exit
    assert status["state"] == "interrupted" and status["step"] == learner.trainer.step
    assert all(actor["state"] in ("stopped", "failed") for actor in status["actors"]), status


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
    with supervised(tmp_path, 2) as run:
        learner, wait_for = run.learner, run.wait_for
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
    with supervised(tmp_path, 2, "supervisor.max_restarts=0") as run:
        learner, wait_for = run.learner, run.wait_for
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


def test_an_actor_plays_the_learners_pool_and_the_learner_keeps_the_results(tmp_path: Path) -> None:
    with supervised(tmp_path, 1, "pool.share=1.0", "pool.every_epochs=1") as run:
        learner, wait_for = run.learner, run.wait_for
        trainer = learner.trainer
        assert trainer.pool is not None
        pool = trainer.pool
        wait_for(lambda: len(pool) >= 2, 90, "two policies in the pool")
        wait_for(lambda: sum(opponent.games for opponent in pool.opponents) >= 8, 120,
                 "the actor's pool games, recorded by the learner")
        assert learner.mode() is Mode.DISTRIBUTED
        assert trainer.collector.stats.pool_games == 0  # every one of them the actor's
        wait_for(lambda: any(line.get("pool_games", 0) > 0 for line in metrics_lines(tmp_path)),
                 60, "an epoch's metrics with pool games")
    logged = (tmp_path / "actors" / "local-0.log").read_text()
    assert "against the learner's opponent pool" in logged, logged[-2000:]
    line = next(line for line in metrics_lines(tmp_path) if line.get("pool_games", 0) > 0)
    assert 0 <= float(line["pool_score"]) <= 1 and line["pool_size"] >= 2


def test_exception_in_an_update_exits_cleanly_with_a_checkpoint_and_reaps_actors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, batch):  # type: ignore[no-untyped-def]
        raise FloatingPointError("injected failure in the PPO update")

    monkeypatch.setattr(Trainer, "_ppo", broken)
    options = LearnerOptions(local_actors=1, bind=f"tcp://127.0.0.1:{free_port_pair()}")
    config = load_config(None, [*TINY, f"run.dir={tmp_path}"])
    with Learner(config, options) as learner:
        assert learner.run() is RunOutcome.FAILED
    assert list((tmp_path / "checkpoints").glob("checkpoint-*.pt"))
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "failed" and status["total_steps"] == 1_000_000
    assert [actor["state"] for actor in status["actors"]] == ["stopped"], status
    assert actor_processes(options.bind) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_an_actor_delivering_large_batches_while_sequential_never_ends_training(tmp_path: Path) -> None:
    """Games from a peer and from the in-process collector race for the buffer for a
    minute: one remote actor plays 64 games at once (batches of thousands of steps,
    several times the buffer) while the learner stays sequential (it wants two actors).
    Training must go on throughout and every step be accounted for."""
    seconds = 60.0
    with supervised(tmp_path, 0, "supervisor.min_actors=2", "supervisor.collect_timeout=1",
                    "supervisor.stall_timeout=600") as run:
        learner, trainer = run.learner, run.learner.trainer
        assert learner.supervisor is not None
        run.wait_for(lambda: learner.mode() is Mode.SEQUENTIAL, 30, "the downgrade")
        with LocalActors(0, learner.options.bind, tmp_path / "big") as big:
            big.start("big", "--games", "64")  # a remote actor: the supervisor leaves it be
            run.wait_for(lambda: learner.actors.known("big") and info(learner, "big").games_received > 0,
                         60, "the big actor's first games")
            ends, epoch = time.monotonic() + seconds, trainer.epoch
            while time.monotonic() < ends:
                run.wait_for(lambda e=epoch: trainer.epoch > e, 30, "training to advance")
                epoch = trainer.epoch
                assert learner.mode() is Mode.SEQUENTIAL
                assert learner.ledger().balanced, learner.ledger()
        delivered = info(learner, "big").steps_received
    assert [t.mode for t in learner.supervisor.transitions] == ["sequential"]
    ledger = learner.ledger()
    assert ledger.balanced, ledger
    assert delivered > 4 * trainer.buffer.capacity and ledger.dropped["backpressure"] > 0
