"""Ratings during training: an Elo table of the run's policies, anchored at random = 0.

Every ``evaluation.every_epochs`` epochs the current network is saved to the rating pool
(``RUN/ratings/pool/step-N.pt``) and a separate ``keisei-eval`` process plays it against
``random``, ``greedy`` and the last ``pool_size`` rated policies. Training does not wait:
the job's results are picked up at the first epoch after it finishes, join every earlier
result, and the whole table is refitted (``keisei.elo.fit_ratings``). The table
goes into checkpoints, ``RUN/ratings.json``, the dashboard and the JSONL metrics
(``ratings``, ``elo``, ``elo_step``, ``win_rate_random``, ``win_rate_greedy``). A job
still running when the next one is due is left alone and the new one skipped (counted).
At the end of a finished run the final policy is rated too.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keisei.checkpoint import save_policy
from keisei.config import EvaluationConfig
from keisei.elo import ANCHOR, fit_ratings
from keisei.evaluation import (
    GreedyPlayer,
    Pairing,
    RandomPlayer,
    load_openings,
    play_match,
    tally,
)
from keisei.files import write_json_atomically
from keisei.processes import stop_process_tree
from keisei.rundir import RunDir
from learner.reports import Rating, RatingsReport
from learner.trainer import Trainer

logger = logging.getLogger(__name__)

BASELINES = ("random", "greedy")
CALIBRATION_PAIRS = 100
"""Colour-swapped pairs of greedy against random that place greedy in the table."""


@dataclass
class RatingJob:
    name: str
    step: int
    folder: Path
    process: subprocess.Popen[bytes]
    started: float


class Ratings:
    """Callback that starts rating jobs, collects their results and keeps the Elo table."""

    def __init__(self, config: EvaluationConfig, run_dir: Path, trainer: Trainer) -> None:
        self.config = config
        self.trainer = trainer
        self.run = RunDir(run_dir)
        self.folder = self.run.rating_jobs
        self.pairings: list[Pairing] = []
        self.rated: list[tuple[str, int]] = []
        """(name, step) of every policy whose results are in, oldest first."""
        self.table: dict[str, float] = {}
        self.latest: dict[str, Any] = {}
        """The newest rated policy: name, step, elo and its score against each opponent."""
        self.job: RatingJob | None = None
        self.skipped = 0

    # --- each epoch -------------------------------------------------------------------------
    def on_epoch(self) -> RatingsReport:
        """Take in a finished job's results, start the next job when it is due, and report."""
        rating = self.poll()
        every = self.config.every_epochs
        if every and self.trainer.epoch % every == 0:
            self.start()
        return RatingsReport(self.skipped, rating)

    def poll(self) -> Rating | None:
        """If the running job has finished, take in its results and return the new rating."""
        job = self.job
        if job is None or job.process.poll() is None:
            return None
        self.job = None
        results_path = job.folder / "results.json"
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
            pairings = [Pairing.from_dict(item) for item in results["pairings"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("rating of %s failed (exit code %s; log in %s): %s", job.name,
                         job.process.returncode, job.folder / "log.txt", exc)
            return None
        self.pairings += pairings
        self.rated.append((job.name, job.step))
        self.table = fit_ratings(self.pairings, ANCHOR)
        self.latest = {"name": job.name, "step": job.step, "elo": self.table[job.name],
                       "scores": {pairing.second: pairing.result.score for pairing in pairings}}
        self._write_table()
        logger.info("rated %s (step %d) in %.0f s: Elo %+.0f (random = 0); %s", job.name, job.step,
                    time.monotonic() - job.started, self.table[job.name],
                    ", ".join(f"{pairing.second} {pairing.result}" for pairing in pairings))
        scores = self.latest["scores"]
        return Rating(dict(self.table), self.latest["elo"], self.latest["step"],
                      scores.get("random"), scores.get("greedy"))

    # --- jobs -------------------------------------------------------------------------------
    def start(self) -> None:
        """Save the current policy to the pool and start rating it, unless a job runs."""
        if self.job is not None:
            self.skipped += 1
            logger.warning("rating of %s still running at epoch %d: this epoch's rating is "
                           "skipped (rate less often with evaluation.every_epochs)", self.job.name,
                           self.trainer.epoch)
            return
        if not any({pairing.first, pairing.second} == set(BASELINES) for pairing in self.pairings):
            self.pairings.append(self.calibrate_baselines())
        trainer = self.trainer
        name = f"step-{trainer.step:012d}"
        if any(rated == name for rated, _ in self.rated):
            return
        pool = self.folder / "pool"
        snapshot = save_policy(pool / f"{name}.pt", {
            "model": trainer.model.state_dict(), "config": trainer.config.to_dict(),
            "counters": {"step": trainer.step, "policy_version": trainer.policy_version}})
        opponents = list(BASELINES)
        for previous, _ in self.rated[-self.config.pool_size:] if self.config.pool_size else []:
            path = pool / f"{previous}.pt"
            if path.is_file():
                opponents.append(f"checkpoint:{path}")
        folder = self.folder / "jobs" / name
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "workers.evaluate", "--checkpoint", str(snapshot),
                   "--name", name, "--games", str(self.config.games), "--max-plies",
                   str(self.config.max_plies), "--seed", str(trainer.config.run.seed + trainer.epoch),
                   "--threads", "1", "--device", "cpu", "--output", str(folder)]
        if self.config.visits:
            command += ["--visits", str(self.config.visits)]
        for opponent in opponents:
            command += ["--opponent", opponent]
        with open(folder / "log.txt", "wb") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_lower_priority)
        self.job = RatingJob(name, trainer.step, folder, process, time.monotonic())
        logger.info("rating %s against %d opponents in process %d", name, len(opponents), process.pid)

    def calibrate_baselines(self) -> Pairing:
        """Greedy against random, played here (cheap: no network), so the table places
        greedy by a direct match and not only through the policies' results."""
        played = play_match(GreedyPlayer(), RandomPlayer(), load_openings(),
                            range(CALIBRATION_PAIRS), seed=self.trainer.config.run.seed,
                            max_plies=self.config.max_plies)
        pairing = Pairing("greedy", "random", tally(played))
        logger.info("greedy against random: %s", pairing.result)
        return pairing

    def finish(self, timeout: float) -> bool:
        """At the end of a finished run: wait for the running job, then rate the final
        policy if it is not rated yet, all within ``timeout`` seconds. Returns whether a
        new rating came in."""
        if not self.config.every_epochs:
            return False
        deadline = time.monotonic() + timeout
        rated = False
        for _ in range(2):
            if self.job is None:
                if self.rated and self.rated[-1][1] == self.trainer.step:
                    break
                self.start()
            job = self.job
            assert job is not None
            try:
                job.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                logger.warning("rating of %s not done after %.0f s: stopped", job.name, timeout)
                break
            rated = self.poll() is not None or rated
        return rated

    def close(self) -> None:
        """Stop a running job and its engines (its results are lost; the pool file stays)."""
        job, self.job = self.job, None
        if job is not None:
            stop_process_tree(job.process, grace_seconds=5.0)

    def __enter__(self) -> Ratings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state --------------------------------------------------------------------------------
    def _write_table(self) -> None:
        write_json_atomically(self.run.ratings, self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": ANCHOR, "table": dict(self.table), "latest": dict(self.latest),
                "rated": [list(item) for item in self.rated],
                "pairings": [pairing.to_dict() for pairing in self.pairings],
                "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairings = [Pairing.from_dict(item) for item in state["pairings"]]
        self.rated = [(str(name), int(step)) for name, step in state["rated"]]
        self.table = {str(name): float(elo) for name, elo in state["table"].items()}
        self.latest = dict(state["latest"])
        self.skipped = int(state.get("skipped", 0))


def _lower_priority() -> None:
    """In the rating process: yield the CPU to training."""
    os.nice(10)
