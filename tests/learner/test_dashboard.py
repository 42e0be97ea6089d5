"""The plain-log epoch line says what is true."""

from __future__ import annotations

import dataclasses

from helpers import epoch_report

from learner.dashboard import Dashboard
from learner.reports import ActorsReport, EpochReport, GamesReport, PoolReport


def with_actors(report: EpochReport, rate: float) -> EpochReport:
    actors = ActorsReport([], rate, {}, {"healthy": 2, "stale": 0})
    return dataclasses.replace(report, actors=actors)


def test_an_epoch_without_finished_games_says_so_instead_of_nan() -> None:
    report = dataclasses.replace(epoch_report(256, 1), games=GamesReport(0, float("nan"), float("nan"),
                                                                            float("nan"), float("nan"), {}))
    line = Dashboard.summary_line(report)
    assert "no game finished" in line and "nan" not in line
    assert "games 2 len 64 B/W/D 0.50/0.50/0.00" in Dashboard.summary_line(epoch_report(256, 1))


def test_the_log_line_shows_the_rate_the_actors_delivered() -> None:
    report = with_actors(epoch_report(256, 1), rate=300.0)
    assert "actors 2 healthy, 300 steps/s delivered" in Dashboard.summary_line(report)


def test_the_pool_shows_its_size_and_the_learners_score() -> None:
    report = epoch_report(256, 1)
    assert "pool" not in Dashboard.summary_line(report)
    pooled = dataclasses.replace(report, pool=PoolReport(3, 4, 0.625, []))
    assert "| pool 3: score 0.625 in 4 games" in Dashboard.summary_line(pooled)
    empty = dataclasses.replace(report, pool=PoolReport(0, 0, float("nan"), []))
    assert "| pool 0: no game" in Dashboard.summary_line(empty)
    assert pooled.to_json()["pool_score"] == 0.625 and empty.to_json()["pool_score"] is None


def test_an_unhealthy_update_is_flagged_in_the_line() -> None:
    report = epoch_report(256, 1)  # KL 0.01, clip fraction 0.1, explained variance 0.2
    assert "healthy band" not in Dashboard.summary_line(report)
    update = dataclasses.replace(report.update, clipfrac=0.708, approx_kl=5164.0,
                                 explained_variance=-0.23)
    line = Dashboard.summary_line(dataclasses.replace(report, update=update))
    assert line.endswith("| outside the healthy band: KL (sampled estimate) 5.16e+03 > 0.05, "
                         "clip fraction 0.708 > 0.3, explained variance -0.23 < 0"), line


def test_the_live_header_shows_a_time_budget_when_one_is_set() -> None:
    import io

    from rich.console import Console

    from keisei.config import load_config
    from learner.trainer import Trainer

    settings = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
                "train.steps_per_epoch=128", "train.minibatch_size=32", "run.threads=1",
                "display.mode=rich"]
    for extra, shown in ((["train.total_steps=1000"], "step 0/1,000 (0.0%)"),
                         (["train.minutes=2"], "step 0, 0.5 of 2 min (25.0%)")):
        config = load_config(None, [*settings, *extra])
        trainer = Trainer.build(config)
        trainer.train_seconds = 30.0
        screen = io.StringIO()
        Console(file=screen, width=200).print(Dashboard(trainer, config.display, io.StringIO()).render())
        assert shown in screen.getvalue()


def test_the_loss_terms_beyond_ppo_are_shown_while_they_are_on() -> None:
    report = epoch_report(256, 1)
    assert report.update.extra_terms() == []
    assert "search" not in Dashboard.summary_line(report)
    update = dataclasses.replace(report.update, init_kl=0.0151, init_kl_coef=0.5,
                                 value_anchor=0.0123, search_loss=2.0884, search_targets=514,
                                 supervised_loss=2.2291, supervised_accuracy=0.3712,
                                 supervised_value_loss=0.2468, supervised_positions=362_004)
    terms = ("init_kl 0.015 x 0.50, value anchor 0.012, search 2.088 on 514, "
             "engine moves 2.229 top-1 0.37 value 0.247 of 362004")
    line = Dashboard.summary_line(dataclasses.replace(report, update=update))
    assert line.endswith(f"update 1.0s | {terms}"), line
    # a search epoch without targets, and engine games off: neither is named
    quiet = dataclasses.replace(report.update, search_loss=float("nan"), search_targets=0,
                                value_anchor=0.0)
    assert quiet.extra_terms() == ["value anchor 0.000"]
