"""keisei-plot charts from a run's metrics, and TensorBoard scalars from MetricsWriter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import EPOCH_FIELDS, epoch_report

from keisei.metrics import MetricsWriter
from learner.fields import tensorboard_layout
from learner.reports import Rating
from learner.view.plot import main, read_metrics


def fake_run(run_dir: Path) -> None:
    run_dir.mkdir()
    lines = []
    for epoch in range(1, 7):
        record = {"epoch": epoch, "step": 256 * epoch, "steps_per_second": 400.0 + epoch,
                  "policy_loss": -0.01 * epoch, "value_loss": 0.5 / epoch, "entropy": 3.0,
                  "approx_kl": 0.01, "clipfrac": 0.1, "collect_seconds": 0.5, "update_seconds": 0.6,
                  "black_win_rate": 0.4, "white_win_rate": 0.4, "draw_rate": 0.2,
                  "mean_game_length": 120.0, "explained_variance": None}
        if epoch % 2 == 0:
            record.update({"elo": 20.0 * epoch, "elo_step": 256 * (epoch - 1),
                           "win_rate_random": 0.5 + 0.05 * epoch, "win_rate_greedy": 0.1 * epoch})
        lines.append(json.dumps(record))
    lines.append('{"epoch": 7, "step": 17')  # a run killed mid-write
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "ratings.json").write_text(json.dumps({
        "table": {"random": 0.0, "greedy": 300.0, "step-000000000256": 40.0, "step-000000000768": 90.0},
        "rated": [["step-000000000256", 256], ["step-000000000768", 768]],
        "pairings": [{"first": "step-000000000256", "second": "random", "wins": 3, "draws": 1, "losses": 0},
                     {"first": "step-000000000768", "second": "greedy", "wins": 1, "draws": 0, "losses": 3},
                     {"first": "greedy", "second": "random", "wins": 9, "draws": 1, "losses": 0}]}))


def test_plot_writes_every_chart_and_reports_unreadable_lines(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    fake_run(run_dir)
    records, unreadable = read_metrics(run_dir / "metrics.jsonl")
    assert len(records) == 6 and unreadable == 1
    assert main([str(run_dir)]) == 0
    out, err = capsys.readouterr()
    for name in ("throughput", "losses", "update", "games", "ratings"):
        path = run_dir / "plots" / f"{name}.png"
        assert str(path) in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    assert "skipped 1 unreadable line" in err
    assert not (run_dir / "plots" / "anchors.png").exists()  # none of them was on
    (run_dir / "ratings.json").unlink()  # ratings from the metrics alone
    assert main([str(run_dir), "--output", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "ratings.png").is_file()


def test_plot_draws_the_anchors_of_a_run_that_had_them(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    fake_run(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:6]]
    for record in lines:
        record.update({"init_kl": 0.02, "value_anchor": None, "supervised_loss": 2.2,
                       "supervised_value_loss": 0.25, "supervised_accuracy": 0.37})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in lines))
    assert main([str(run_dir)]) == 0
    assert (run_dir / "plots" / "anchors.png").stat().st_size > 5_000


def test_plot_refuses_a_directory_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_metrics_writer_writes_tensorboard_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "tb", tensorboard_layout()) as writer:
        writer(epoch_report(256, 1, policy_loss=0.5))
        writer(epoch_report(512, 2, policy_loss=0.25, rating=Rating({"random": 0.0}, 120.0, 256, 1.0, 0.5)))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("policy_loss")] == [(256, 0.5), (512, 0.25)]
    assert [(event.step, event.value) for event in events.Scalars("elo")] == [(256, 120.0)]
    assert "mode" not in events.Tags()["scalars"] and "ratings" not in events.Tags()["scalars"]
    # the custom-scalars tab: the charts of learner.fields, grouped
    from tensorboard.plugins.custom_scalar import layout_pb2

    config = events.Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(config.string_val[0])
    charts = {category.title: [chart.title for chart in category.chart] for category in layout.category}
    assert charts["update"][:2] == ["KL from the pre-update policy (nats)", "clip fraction (fraction)"]
    assert set(charts) == {"losses", "anchors", "update", "throughput", "games", "ratings"}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and set(lines[0]) == EPOCH_FIELDS | {"ratings_skipped"}
    assert set(lines[1]) - set(lines[0]) == {"ratings", "elo", "elo_step", "win_rate_random",
                                             "win_rate_greedy"}
    assert lines[1]["elo"] == 120.0 and lines[1]["win_rate_greedy"] == 0.5
