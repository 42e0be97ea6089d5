"""``keisei-plot RUN_DIR``: learning curves as PNG charts from a run's metrics.

Reads ``RUN_DIR/metrics.jsonl`` (and ``RUN_DIR/ratings.json`` when ratings are on) and
writes a PNG per group of ``learner.fields.CHARTS`` (``losses.png``, ``update.png``,
``throughput.png``, ``games.png``) and ``ratings.png`` into
``RUN_DIR/plots`` (or ``--output``). Needs matplotlib: ``pip install 'keisei[plot]'``.
Exit codes: 0 written, 2 no such run, no metrics, or no matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keisei.cli import add_version
from keisei.rundir import RunDir
from learner.fields import BY_NAME, CHARTS, Chart, unit_of
from learner.view.run_files import ratings_rows


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON lines of ``path`` and how many lines could not be read (a run killed
    mid-write can leave a partial last line)."""
    records, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            unreadable += 1
    return records, unreadable


def series(records: Sequence[dict[str, Any]], key: str,
           step_key: str = "step") -> tuple[list[int], list[float]]:
    """(steps, values) for the records that have a finite number under ``key``."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(int(record.get(step_key, record["step"])))
            values.append(float(value))
    return steps, values


def plot_run(run_dir: Path, records: Sequence[dict[str, Any]], output: Path) -> list[Path]:
    """Write the charts of ``records`` (the run's metrics lines); return their paths.

    :raises ImportError: if matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda value, _: f"{value:,.0f}")  # steps: 20,000

    output.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Chart]] = {}
    for chart in CHARTS:
        if chart.group != "ratings":  # ratings.png has its own panels (below)
            groups.setdefault(chart.group, []).append(chart)
    written = []
    for name, charts in groups.items():
        if not any(series(records, key)[0] for chart in charts for key in chart.fields):
            continue  # a group of settings this run left off (the anchors) has no figure
        figure, axes = plt.subplots(len(charts), 1, figsize=(10, 2.4 * len(charts)), sharex=True,
                                    squeeze=False)
        for axis, chart in zip(axes[:, 0], charts, strict=True):
            for key in chart.fields:
                steps, values = series(records, key)
                if chart.log:
                    steps = [step for step, value in zip(steps, values, strict=True) if value > 0]
                    values = [value for value in values if value > 0]
                if steps:
                    axis.plot(steps, values, label=BY_NAME[key].label)
            field = BY_NAME[chart.fields[0]]
            if chart.log:
                axis.set_yscale("log")
            elif field.nonnegative:
                axis.set_ylim(bottom=0)
            if field.low is not None or field.high is not None:  # where a healthy run stays
                low, high = axis.get_ylim()
                axis.axhspan(low if field.low is None else field.low,
                             high if field.high is None else field.high, color="tab:green",
                             alpha=0.08, label="healthy band")
                axis.set_ylim(low, high)
            axis.set_title(chart.title)
            unit = unit_of(chart)
            axis.set_ylabel(f"{chart.title} ({unit})" if unit else chart.title, fontsize="small")
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:  # outside the data, on the right
                axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        axes[-1, 0].set_xlabel("training steps (plies)")
        axes[-1, 0].xaxis.set_major_formatter(thousands)
        figure.suptitle(f"{run_dir.name}: {name}")
        figure.tight_layout(rect=(0, 0, 1, 0.98))
        written.append(output / f"{name}.png")
        figure.savefig(written[-1], dpi=100)
        plt.close(figure)
    written.append(_plot_ratings(plt, run_dir, records, output / "ratings.png", thousands))
    return written


def _plot_ratings(plt: Any, run_dir: Path, records: Sequence[dict[str, Any]], path: Path,
                  thousands: Any) -> Path:
    """Elo over steps and the scores against random and greedy at each rating: from
    ``ratings.json`` when it exists (the table refitted on all games, and the final
    policy's rating), else from the metrics lines."""
    figure, (elo_axis, rate_axis) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    table_path = RunDir(run_dir).ratings
    scores: dict[str, tuple[list[int], list[float]]] = {"random": ([], []), "greedy": ([], [])}
    if table_path.is_file():
        saved = json.loads(table_path.read_text(encoding="utf-8"))
        table, steps_of = saved["table"], {str(name): int(step) for name, step in saved["rated"]}
        rated = sorted((row["step"], row["elo"], row.get("interval") or 0.0)
                       for row in ratings_rows(saved) if row["step"] is not None
                       and row["elo"] is not None)
        elo_axis.errorbar([step for step, _, _ in rated], [elo for _, elo, _ in rated],
                          yerr=[half for _, _, half in rated], marker="o", capsize=3,
                          label="policy, 95% interval (refitted on all games)")
        if "greedy" in table:
            elo_axis.axhline(table["greedy"], linestyle="--", color="gray", label="greedy")
        for pairing in saved.get("pairings", []):
            games = pairing["wins"] + pairing["draws"] + pairing["losses"]
            if pairing["first"] in steps_of and pairing["second"] in scores and games:
                steps, values = scores[pairing["second"]]
                steps.append(steps_of[pairing["first"]])
                values.append((pairing["wins"] + 0.5 * pairing["draws"]) / games)
    else:
        elo_axis.plot(*series(records, "elo", "elo_step"), marker="o", label="policy")
        for opponent in scores:
            scores[opponent] = series(records, f"win_rate_{opponent}", "elo_step")
    elo_axis.axhline(0.0, linestyle=":", color="black", label="random (0)")
    elo_axis.set_title("Elo (random = 0)")
    elo_axis.set_ylabel("Elo")
    elo_axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    elo_axis.grid(alpha=0.3)
    for opponent, (steps, values) in scores.items():
        rate_axis.plot(steps, values, marker="o", label=f"score vs {opponent}")
    rate_axis.set_ylim(-0.02, 1.02)
    rate_axis.set_title("score at each rating")
    rate_axis.set_ylabel("score (1 win, ½ draw)")
    rate_axis.set_xlabel("training steps (plies)")
    rate_axis.xaxis.set_major_formatter(thousands)
    rate_axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    rate_axis.grid(alpha=0.3)
    figure.suptitle(f"{run_dir.name}: ratings")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keisei-plot", description="PNG learning curves of a Keisei run.")
    add_version(parser)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--output", metavar="DIR", help="where to write (default: RUN_DIR/plots)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    metrics = RunDir(run_dir).metrics
    if not metrics.is_file():
        print(f"keisei-plot: {metrics} does not exist; is {run_dir} a run directory?", file=sys.stderr)
        return 2
    try:
        records, unreadable = read_metrics(metrics)
        written = plot_run(run_dir, records, Path(args.output) if args.output else run_dir / "plots")
    except ImportError as exc:
        print(f"keisei-plot: needs matplotlib ({exc}); pip install 'keisei[plot]'", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as exc:
        print(f"keisei-plot: cannot plot {run_dir}: {exc}", file=sys.stderr)
        return 2
    if unreadable:
        print(f"keisei-plot: skipped {unreadable} unreadable line(s) of {metrics}", file=sys.stderr)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
