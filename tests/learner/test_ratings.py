"""The learner's Elo table: taking in a rating job's results, failed jobs, stopping a job
and its children, and the dashboard's view of the table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from keisei.config import DisplayConfig, load_config
from learner.dashboard import Dashboard
from learner.ratings import RatingJob, Ratings
from learner.trainer import Trainer

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=4",
        "selfplay.max_plies=32", "train.steps_per_epoch=64", "train.minibatch_size=32",
        "run.threads=1", "evaluation.games=2", "evaluation.max_plies=40"]


@pytest.fixture
def trainer(tmp_path: Path) -> Trainer:
    return Trainer.build(load_config(None, [*TINY, f"run.dir={tmp_path}"]), threading.Event())


def finished_job(folder: Path, name: str, step: int, results: dict | None) -> RatingJob:
    folder.mkdir(parents=True)
    if results is not None:
        (folder / "results.json").write_text(json.dumps(results))
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return RatingJob(name, step, folder, process, time.monotonic())


def test_a_finished_job_refits_the_table_and_reports_metrics(trainer: Trainer, tmp_path: Path) -> None:
    ratings = Ratings(trainer.config.evaluation, tmp_path, trainer)
    ratings.pairings.append(ratings.calibrate_baselines())
    ratings.job = finished_job(tmp_path / "job", "step-000000000064", 64, {"pairings": [
        {"first": "step-000000000064", "second": "random", "wins": 6, "draws": 0, "losses": 2},
        {"first": "step-000000000064", "second": "greedy", "wins": 1, "draws": 1, "losses": 6}]})
    rating = ratings.poll()
    assert ratings.job is None and ratings.rated == [("step-000000000064", 64)]
    assert rating is not None and rating.elo_step == 64
    assert rating.ratings["random"] == 0.0 and rating.elo == ratings.table["step-000000000064"]
    assert rating.win_rate_random == 0.75 and rating.win_rate_greedy == 0.1875
    saved = json.loads((tmp_path / "ratings.json").read_text())
    restored = Ratings(trainer.config.evaluation, tmp_path, trainer)
    restored.load_state_dict(saved)
    assert restored.table == ratings.table and restored.rated == ratings.rated

    console = io.StringIO()
    dashboard = Dashboard(trainer, DisplayConfig(mode="rich"), stream=console, ratings=ratings)
    dashboard.console.print(dashboard.render())  # type: ignore[union-attr]
    text = console.getvalue()
    assert "rated (random = 0)" in text and "step-000000000064" in text and "greedy" in text


def test_a_failed_job_is_logged_and_loses_nothing(trainer: Trainer, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    ratings = Ratings(trainer.config.evaluation, tmp_path, trainer)
    ratings.job = finished_job(tmp_path / "job", "step-000000000064", 64, None)
    assert ratings.poll() is None
    assert "rating of step-000000000064 failed" in caplog.text and "log.txt" in caplog.text
    assert ratings.rated == [] and ratings.job is None


def test_close_stops_a_running_job_and_its_children(trainer: Trainer, tmp_path: Path) -> None:
    ratings = Ratings(trainer.config.evaluation, tmp_path, trainer)
    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60; wait"])
    deadline = time.monotonic() + 10
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    children = psutil.Process(process.pid).children(recursive=True)
    assert children
    ratings.job = RatingJob("step-1", 1, tmp_path, process, time.monotonic())
    ratings.close()
    assert process.poll() is not None and ratings.job is None
    psutil.wait_procs(children, timeout=5)
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
