"""SIGKILL the learner at random moments, 24 times (before its first checkpoint, during
checkpoint writes, mid-epoch), resuming after each: the run directory always resumes,
and the counters and metrics.jsonl come out exactly as one uninterrupted run's."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
from helpers import learner_command, metrics_lines

from keisei.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

KILLS = 24
EPOCH = 128


def kill_when(process: subprocess.Popen[str], run_dir: Path, moment: str, rng: random.Random) -> bool:
    """SIGKILL ``process`` at ``moment``: early (before or at its first checkpoint), while
    a checkpoint is being written (a temporary file exists), or after a random delay.
    Returns whether a checkpoint was being written at the kill."""
    deadline = time.monotonic() + {"early": rng.uniform(0.5, 3.0), "writing": 20.0,
                                   "random": rng.uniform(2.0, 6.0)}[moment]
    folder = run_dir / "checkpoints"
    writing = False
    while time.monotonic() < deadline and process.poll() is None:
        writing = folder.is_dir() and any(folder.glob(".checkpoint-*.tmp"))
        if moment == "writing" and writing:
            break
        time.sleep(0.001 if moment == "writing" else 0.05)
    process.kill()
    process.wait(timeout=30)
    return writing


@pytest.mark.slow
@pytest.mark.e2e
def test_the_learner_survives_being_killed_at_any_moment(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rng = random.Random(7)
    moments = ["early"] * 4 + ["writing"] * 10 + ["random"] * (KILLS - 14)
    rng.shuffle(moments)
    moments = ["early", *moments]  # the very first start dies before it trains much
    resumed_from, during_writes, fresh_starts = [], 0, 0
    for moment in moments:
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        resume = ["--resume"] if checkpoint is not None else []
        if checkpoint is not None:
            resumed_from.append(load_checkpoint(checkpoint)["counters"]["step"])
        else:
            fresh_starts += 1  # killed before its step-0 checkpoint: a new run, same folder
        command = [*learner_command(run_dir, "train.total_steps=100000000"), *resume]
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as process:
            during_writes += kill_when(process, run_dir, moment, rng)
            assert process.returncode == -9, process.stderr.read() if process.stderr else ""
        assert not list_checkpoints(run_dir / "checkpoints") or \
            load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))  # never left unloadable
    target = max(resumed_from + [0]) + 3 * EPOCH
    final = subprocess.run([*learner_command(run_dir, f"train.total_steps={target}"), "--resume"],
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    lines = metrics_lines(run_dir)
    assert [line["step"] for line in lines] == list(range(EPOCH, target + 1, EPOCH))
    assert [line["policy_version"] for line in lines] == list(range(1, target // EPOCH + 1))
    counters = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["counters"]
    assert (counters["step"], counters["epoch"], counters["policy_version"]) == \
        (target, target // EPOCH, target // EPOCH)
    print(f"{len(moments)} kills: {fresh_starts} before the first checkpoint, {during_writes} "
          f"during a checkpoint write; resumed from steps {resumed_from}")
    assert len(resumed_from) >= KILLS // 2 and any(step > 0 for step in resumed_from)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
