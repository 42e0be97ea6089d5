"""Shared helpers for tests that run real learner and actor processes on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EPOCH_FIELDS = {
    "approx_kl", "black_win_rate", "exact_kl", "clipfrac", "collect_seconds", "collected_steps", "draw_rate",
    "encode_seconds", "entropy", "epoch", "explained_variance", "games", "grad_norm",
    "inference_seconds", "init_kl", "init_kl_coef", "learning_rate", "loss", "mean_game_length", "mode", "policy_lag_max",
    "policy_lag_mean", "policy_loss", "policy_version", "ppo_passes", "rules_seconds", "search_loss",
    "search_targets", "value_anchor", "supervised_loss", "supervised_value_loss",
    "supervised_accuracy", "supervised_positions", "prior_loss", "prior_accuracy",
    "shaping_weight", "step", "steps_dropped_stale", "steps_per_second", "terminations", "time",
    "train_seconds", "update_seconds", "value_loss", "white_win_rate"}
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


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             context: Callable[[], str] | None = None) -> None:
    """Poll ``condition`` until it holds; on a timeout, fail saying what was awaited and
    ``context()`` (e.g. the learner's last log lines)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = f"\n{context()}" if context is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(0.05)


def start_with_sigint_ignored(command: list[str], **options: Any) -> subprocess.Popen[str]:
    """``command`` started as a shell's background job starts it: SIGINT ignored, so that
    only a handler the program installs itself can take it."""
    return subprocess.Popen(command, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                            **options)


def signal_when(process: subprocess.Popen[str], ready: Callable[[], bool], signum: int,
                timeout: float) -> tuple[str, str]:
    """Once ``ready()`` holds (the process still running), send it ``signum`` and return
    its output (stdout, stderr); it is killed if it outlives any of that."""
    try:
        wait_for(lambda: ready() or process.poll() is not None, timeout, "the process to be ready")
        assert process.poll() is None, f"it ended first (exit {process.returncode}): {process.communicate()}"
        process.send_signal(signum)
        return process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


class LogTail(logging.Handler):
    """The last ``size`` log lines of this process, for failure messages."""

    def __init__(self, size: int = 40) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(name)s: "
                                            "%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "the learner's last log lines:\n  " + "\n  ".join(self.lines)


@contextmanager
def log_tail() -> Iterator[LogTail]:
    """The last log lines of this process (INFO and above) while the block runs."""
    tail = LogTail()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(tail)
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    try:
        yield tail
    finally:
        root.removeHandler(tail)
        root.setLevel(previous)


class Training:
    """A ``Learner.run`` on a background thread (see ``training``)."""

    def __init__(self, learner: Any, until_step: int) -> None:
        self.learner = learner
        self.outcome: Any = None  # learner.app.RunOutcome once run() returned
        self.log = LogTail()  # replaced by the one ``training`` installs
        self.thread = threading.Thread(target=self._run, args=(until_step,), name="training",
                                       daemon=True)

    def _run(self, until_step: int) -> None:
        self.outcome = self.learner.run(until_step=until_step)

    def context(self) -> str:
        ended = "" if self.thread.is_alive() else f"training ended: {self.outcome}\n"
        return ended + self.log.text()

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """``wait_for`` that fails at once, with the log, if training ends meanwhile."""
        def holds() -> bool:
            if not self.thread.is_alive():
                raise AssertionError(f"training ended ({self.outcome}) while waiting for {what}\n"
                                     f"{self.log.text()}")
            return condition()
        wait_for(holds, timeout, what, self.context)


@contextmanager
def training(learner: Any, until_step: int = 10**12, join_timeout: float = 60) -> Iterator[Training]:
    """Run ``learner`` on a background thread until the block ends, then stop it and
    check it stopped; the caller asserts ``outcome`` (``INTERRUPTED`` when the block
    stopped it)."""
    run = Training(learner, until_step)
    with log_tail() as run.log:
        run.thread.start()
        try:
            yield run
        finally:
            learner.stop.set()
            run.thread.join(timeout=join_timeout)
    assert not run.thread.is_alive(), f"the training loop did not stop\n{run.log.text()}"


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
            "train.ppo_passes=1", "run.threads=1", "checkpoint.every_epochs=1",
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


def greedy_games(folder: Path, games: int, seed: int = 0) -> Path:
    """Greedy-vs-greedy games (take the best capture, else a random move) as one CSA file:
    a record set with something learnable in it."""
    from keisei.evaluation import GreedyPlayer, apply_decision
    from keisei.kifu import to_csa
    from keisei.shogi import Game

    folder.mkdir(parents=True, exist_ok=True)
    player = GreedyPlayer()
    texts = []
    for index in range(games):
        rng = random.Random(seed * 10_000 + index)
        game = Game(max_plies=120)
        while not game.is_over:
            apply_decision(game, player.choose([game], [rng])[0])
        texts.append(to_csa(game, ("greedy", "greedy")))
    path = folder / "greedy.csa"
    path.write_text("/\n".join(texts))
    return path
