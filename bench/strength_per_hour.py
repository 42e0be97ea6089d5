"""Strength per hour: a ``keisei-pipeline`` run's networks against wall-clock.

Takes the networks a pipeline left along the way: the checkpoints of its ``pretrain`` and
``selfplay`` phases (or copies of them kept elsewhere, ``--pretrain-checkpoints`` and
``--selfplay-checkpoints``, since a run keeps only its newest few), places each at the
wall-clock the pipeline had spent when it was written, and plays ``--points`` of them,
spread over the run, against each ``--opponent`` (ladder rung names or ``keisei-eval``
specs), ``--games`` games in colour-swapped pairs from the shipped openings, searching
``--visits`` a move (0: the policy alone). A match already played (``WORK/<point>-<opp>``)
is not played again.

Wall-clock: the engine games' minutes (``pipeline.json``); then a pre-training checkpoint
at the pre-training's start-up (reading the records) plus its training seconds; then a
self-play checkpoint at the whole pre-training phase plus the learner's start-up plus the
time from its first epoch's start to that checkpoint's epoch (``metrics.jsonl``).

Prints a table (minutes, phase, step, score and W/D/L against each opponent, the Elo
fitted over every match with the first opponent at 0, and against the first opponent the
Elo's 95% interval) and, with matplotlib, writes ``WORK/strength-per-hour.png``.

Usage: python -m bench.strength_per_hour PIPELINE_DIR [--work DIR] [--opponent SPEC ...]
[--games 100] [--visits 0] [--points 8] [--workers 2] [--seed 0]
[--pretrain-checkpoints DIR] [--selfplay-checkpoints DIR]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from bench.curves import play
from keisei.elo import elo_interval, fit_ratings
from keisei.evaluation import MatchResult, Pairing

STEP = re.compile(r"checkpoint-(\d+)\.pt$")


@dataclass(frozen=True)
class Point:
    """A network of the run, and the pipeline's wall-clock when it was written."""

    phase: str
    step: int
    minutes: float
    path: Path

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.step:012d}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pipeline", help="a keisei-pipeline RUN_DIR")
    parser.add_argument("--work", help="where the matches go (default PIPELINE/strength)")
    parser.add_argument("--opponent", action="append", help="repeatable (default gnushogi-d1)")
    parser.add_argument("--games", type=int, default=100, help="games per point and opponent")
    parser.add_argument("--visits", type=int, default=0, help="search budget (0: the policy)")
    parser.add_argument("--points", type=int, default=8, help="networks to play, spread in time")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-checkpoints", metavar="DIR",
                        help="pre-training checkpoints (default PIPELINE/pretrain/checkpoints)")
    parser.add_argument("--selfplay-checkpoints", metavar="DIR",
                        help="self-play checkpoints (default PIPELINE/selfplay/checkpoints)")
    return parser


def _lines(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for path in folder.glob("checkpoint-*.pt"):
        match = STEP.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def timeline(pipeline: Path, pretrain_dir: Path, selfplay_dir: Path) -> list[Point]:
    """Every checkpoint found, at the pipeline's wall-clock (minutes) when it was written."""
    phases = json.loads((pipeline / "pipeline.json").read_text())["phases"]
    generate = phases["generate"]["seconds"]
    points = []
    pretrain_lines = _lines(pipeline / "pretrain" / "metrics.jsonl")
    pretrain_total = phases["pretrain"]["seconds"]
    startup = max(0.0, pretrain_total - pretrain_lines[-1]["seconds"])
    seconds_at = {int(line["step"]): line["seconds"] for line in pretrain_lines}
    for step, path in _checkpoints(pretrain_dir).items():
        if step in seconds_at:
            points.append(Point("pretrain", step, (generate + startup + seconds_at[step]) / 60,
                                path))
    metrics = pipeline / "selfplay" / "metrics.jsonl"
    if "selfplay" in phases and metrics.is_file():
        lines = _lines(metrics)
        status = json.loads((pipeline / "selfplay" / "status.json").read_text())
        first = lines[0]
        start = first["time"] - first["step"] / max(first["steps_per_second"], 1e-9)
        trained = status.get("train_seconds") or (lines[-1]["time"] - start)
        startup = max(0.0, phases["selfplay"]["seconds"] - trained)
        time_at = {int(line["step"]): line["time"] for line in lines}
        for step, path in _checkpoints(selfplay_dir).items():
            if step in time_at:
                elapsed = generate + pretrain_total + startup + time_at[step] - start
                points.append(Point("selfplay", step, elapsed / 60, path))
    return sorted(points, key=lambda point: point.minutes)


def spread(points: list[Point], count: int) -> list[Point]:
    """``count`` points evenly spread in time, always the first and the last of each phase."""
    if len(points) <= count:
        return points
    keep = set()
    for phase in ("pretrain", "selfplay"):
        of_phase = [point for point in points if point.phase == phase]
        keep |= {id(point) for point in of_phase[:1] + of_phase[-1:]}
    first, last = points[0].minutes, points[-1].minutes
    for index in range(count):
        target = first + (last - first) * index / max(count - 1, 1)
        keep.add(id(min(points, key=lambda point: abs(point.minutes - target))))
    return [point for point in points if id(point) in keep]


def play_point(point: Point, opponent: str, work: Path, args: argparse.Namespace) -> MatchResult:
    output = work / f"{point.name}-{re.sub(r'[^A-Za-z0-9.@-]+', '_', opponent)}"
    return play(point.path, opponent, output, args, name=point.name)


def main() -> None:
    args = build_parser().parse_args()
    pipeline = Path(args.pipeline)
    work = Path(args.work) if args.work else pipeline / "strength"
    opponents = args.opponent or ["gnushogi-d1"]
    points = spread(timeline(pipeline, Path(args.pretrain_checkpoints or pipeline / "pretrain" / "checkpoints"),
                             Path(args.selfplay_checkpoints or pipeline / "selfplay" / "checkpoints")),
                    args.points)
    if not points:
        raise SystemExit(f"no checkpoints of {pipeline}'s pretrain or selfplay phases found")
    results = {(point.name, opponent): play_point(point, opponent, work, args)
               for point in points for opponent in opponents}
    pairings = [Pairing(name, opponent, result) for (name, opponent), result in results.items()]
    ratings = fit_ratings(pairings, anchor=opponents[0])
    budget = f"{args.visits} visits a move" if args.visits else "the policy alone"
    print(f"{pipeline}: {budget}, {args.games} games per point and opponent (colour-swapped "
          f"pairs, seed {args.seed}); Elo fitted with {opponents[0]} at 0")
    header = "".join(f"{opponent[:24]:<26}" for opponent in opponents)
    print(f"{'minutes':>7} {'phase':<9} {'step':>10}  {header}{'Elo':>6}  vs {opponents[0]} [95%]")
    rows = []
    for point in points:
        cells = "".join(f"{result.score:.3f} (+{result.wins} ={result.draws} -{result.losses})".ljust(26)
                        for result in (results[point.name, opponent] for opponent in opponents))
        first = results[point.name, opponents[0]]
        low, high = elo_interval(first.wins, first.draws, first.losses)
        elo = ratings[point.name]
        rows.append((point, elo, low, high))
        print(f"{point.minutes:7.1f} {point.phase:<9} {point.step:>10,}  {cells}{elo:+6.0f}  "
              f"[{low:+.0f}, {high:+.0f}]")
    plot(rows, work / "strength-per-hour.png",
         f"{pipeline.name}: Elo against {opponents[0]} ({budget})")


def plot(rows: list[tuple[Point, float, float, float]], path: Path, title: str) -> None:
    """Fitted Elo against the pipeline's minutes, one colour a phase, if matplotlib is there."""
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib: no plot (pip install 'keisei[plot]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4))
    for phase, label in (("pretrain", "pre-training on engine games"),
                         ("selfplay", "self-play from the pre-trained network")):
        chosen = [(point.minutes, elo, low, high) for point, elo, low, high in rows
                  if point.phase == phase]
        if not chosen:
            continue
        xs, elos = [row[0] for row in chosen], [row[1] for row in chosen]
        # the interval is the first opponent's alone; clipped where a score of 0 or 1 makes it open
        lower = [max(0.0, elo - max(low, elo - 400)) for _, elo, low, _ in chosen]
        upper = [max(0.0, min(high, elo + 400) - elo) for _, elo, _, high in chosen]
        axes.errorbar(xs, elos, yerr=[lower, upper], marker="o", capsize=3, label=label)
    axes.axhline(0.0, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("wall-clock minutes (engine games, then pre-training, then self-play)")
    axes.set_ylabel("Elo")
    axes.set_title(title, fontsize=10)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
