"""Soak: a learner trains for five minutes (KEISEI_SOAK_SECONDS) while its actors are
killed, stopped and continued, and joined by others, at random. At the end it reports
RSS, file descriptors, threads and the step ledger, which must balance. Marked ``soak``:
``make soak`` runs it (CI does, after ``make test``)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest
from helpers import free_port_pair, metrics_lines, training

from keisei.config import load_config
from learner.app import Learner, LearnerOptions, RunOutcome
from learner.local_actors import LocalActors
from learner.reports import Ledger

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=64", "train.steps_per_epoch=256", "train.minibatch_size=64",
        "train.ppo_passes=1", "train.max_policy_lag=1000", "supervisor.heartbeat_timeout=2",
        "supervisor.stall_timeout=5", "supervisor.collect_timeout=6", "supervisor.max_restarts=1000",
        "run.threads=1", "evaluation.every_epochs=0", "display.mode=plain",
        "checkpoint.every_epochs=5"]


STEPS_PER_MINUTE_FLOOR = 256
"""At least one epoch in every minute of the soak: actors failing may slow training
(a downgrade waits ``collect_timeout``), never stall it."""


def steps_each_minute(lines: list[dict[str, object]], start: float, end: float) -> list[int]:
    """Steps trained in each whole minute from ``start`` to ``end`` (wall-clock seconds),
    from the metrics lines' ``time`` and ``step``."""
    def step_at(moment: float) -> int:
        return max([int(line["step"]) for line in lines if float(line["time"]) <= moment],  # type: ignore[arg-type]
                   default=0)
    minutes = int((end - start) // 60)
    return [step_at(start + 60 * (k + 1)) - step_at(start + 60 * k) for k in range(minutes)]


def usage() -> dict[str, float]:
    me = psutil.Process()
    return {"rss_mb": me.memory_info().rss / 2**20, "fds": me.num_fds(), "threads": me.num_threads()}


@pytest.mark.soak
@pytest.mark.slow
def test_a_long_run_with_actors_failing_at_random_stays_bounded_and_exact(tmp_path: Path) -> None:
    seconds = float(os.environ.get("KEISEI_SOAK_SECONDS", "300"))
    rng = random.Random(3)
    config = load_config(None, [*TINY, f"run.dir={tmp_path / 'run'}"])
    options = LearnerOptions(local_actors=2, remote_actors=True,
                             bind=f"tcp://127.0.0.1:{free_port_pair()}", publish_interval=0.5)
    events: dict[str, int] = {"kill": 0, "stop": 0, "visitor": 0}
    with Learner(config, options) as learner, training(learner) as run:
        assert learner.local is not None and learner.supervisor is not None
        trainer = learner.trainer
        run.wait_for(lambda: trainer.epoch >= 2, 120, "two epochs")
        start, started_at = usage(), time.time()
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            time.sleep(rng.uniform(5, 15))
            assert run.thread.is_alive(), run.context()
            event = rng.choice(sorted(events))
            events[event] += 1
            process = learner.local.processes[rng.choice(sorted(learner.local.processes))]
            if event == "kill" and process.poll() is None:
                process.send_signal(signal.SIGKILL)
            elif event == "stop" and process.poll() is None:
                process.send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(1, 4))
                process.send_signal(signal.SIGCONT)
            elif event == "visitor":
                with LocalActors(0, options.bind, tmp_path / "visitors") as visitors:
                    visitors.start(f"visitor-{events[event]}")  # a remote actor, for a while
                    time.sleep(rng.uniform(3, 10))
        end, ended_at = usage(), time.time()
    assert run.outcome is RunOutcome.INTERRUPTED, run.context()
    ledger = learner.ledger()
    print(f"soak {seconds:.0f} s: {events}; epochs {trainer.epoch}, steps {trainer.step}; "
          f"mode changes {len(learner.supervisor.transitions)}, restarts {learner.supervisor.restarts}")
    print(f"  start {start}\n  end   {end}\n  ledger {ledger}")
    assert ledger.balanced, ledger
    lines = metrics_lines(tmp_path / "run")
    unbalanced = [line["step"] for line in lines if not Ledger(**line["ledger"]).balanced]  # type: ignore[arg-type]
    assert not unbalanced, f"the ledger did not balance at steps {unbalanced}"
    per_minute = steps_each_minute(lines, started_at, ended_at)
    print(f"  steps each minute {per_minute}")
    assert per_minute and min(per_minute) >= STEPS_PER_MINUTE_FLOOR, per_minute
    assert trainer.epoch > 2 and (learner.supervisor.restarts >= 1 or events["kill"] == 0)
    assert end["fds"] <= start["fds"] + 16 and end["threads"] <= start["threads"] + 8
    assert end["rss_mb"] <= 2 * start["rss_mb"] + 200
    leftovers = [child for child in psutil.Process().children(recursive=True)
                 if child.status() != psutil.STATUS_ZOMBIE and "workers.actor" in " ".join(child.cmdline())]
    assert leftovers == [] and not [child for child in psutil.Process().children()
                                    if child.status() == psutil.STATUS_ZOMBIE]
