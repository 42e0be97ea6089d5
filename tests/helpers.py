"""Shared helpers for tests that run real learner and actor processes on 127.0.0.1."""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

EPOCH_FIELDS = {
    "approx_kl", "black_win_rate", "clipfrac", "collect_seconds", "collected_steps", "draw_rate",
    "encode_seconds", "entropy", "epoch", "explained_variance", "games", "grad_norm",
    "inference_seconds", "init_kl", "init_kl_coef", "learning_rate", "loss", "mean_game_length", "mode", "policy_lag_max",
    "policy_lag_mean", "policy_loss", "policy_version", "ppo_passes", "rules_seconds",
    "shaping_weight", "step", "steps_dropped_stale", "steps_per_second", "terminations", "time",
    "update_seconds", "value_loss", "white_win_rate"}
"""metrics.jsonl's fields from the training loop itself (users' scripts read these names)."""

DISTRIBUTED_FIELDS = {
    "actor_restarts", "actor_states", "actor_steps_per_second", "actors", "failures_detected",
    "in_flight_steps_discarded", "mode_transitions", "transitions", "wire_games_accepted",
    "wire_games_bytes", "wire_games_invalid", "wire_invalid_messages", "wire_messages",
    "wire_rejected_hellos", "wire_steps_dropped_backpressure", "wire_steps_invalid",
    "wire_steps_received"}
"""metrics.jsonl's fields that actors add (users' scripts read these names)."""


def free_port_pair() -> int:
    """A port P such that P (ROUTER) and P + 1 (PUB) are both free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 60_000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def epoch_report(step: int, epoch: int, policy_loss: float = 0.5, rating: object = None) -> object:
    """A complete ``EpochReport`` with plain figures (``rating``: a ``reports.Rating``)."""
    from learner.reports import (
        CollectReport,
        EpochReport,
        GamesReport,
        Mode,
        RatingsReport,
        UpdateReport,
    )

    update = UpdateReport(loss=policy_loss, policy_loss=policy_loss, value_loss=0.1, entropy=3.0,
                          approx_kl=0.01, clipfrac=0.1, grad_norm=1.0, ppo_passes=4,
                          learning_rate=1e-3, shaping_weight=0.0, explained_variance=0.2,
                          update_seconds=1.0, policy_lag_mean=0.5, policy_lag_max=1)
    return EpochReport(step=step, epoch=epoch, policy_version=epoch, mode=Mode.SEQUENTIAL,
                       steps_per_second=100.0, steps_dropped_stale=0, time=0.0,
                       collect=CollectReport(1.0, 128, 0.5, 0.1, 0.1), update=update,
                       games=GamesReport(2, 64.0, 0.5, 0.5, 0.0, {"checkmate": 2}),
                       ratings=RatingsReport(0, rating))  # type: ignore[arg-type]


CLI_TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
            "selfplay.max_plies=64", "train.steps_per_epoch=128", "train.minibatch_size=32",
            "train.ppo_epochs=1", "run.threads=1", "checkpoint.every_epochs=1",
            "display.mode=plain", "evaluation.every_epochs=0"]
"""A learner run of a few seconds an epoch, for tests of the command."""


def learner_command(run_dir: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "learner.main", "--set", f"run.dir={run_dir}"]
    for override in (*CLI_TINY, *extra):
        command += ["--set", override]
    return command


def metrics_lines(run_dir: Path) -> list[dict[str, object]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
