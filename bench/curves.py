"""Learning curves side by side: the saved curve networks of several ``bench.learning``
runs against the same opponents, with the same search budget, point by point.

Each run folder is one ``bench.learning --save-curve DIR`` (``curve.json`` names each
point's network, minutes and steps). Every point plays every opponent (ladder rung
names or ``keisei-eval --opponent`` specs) ``--games`` games in colour-swapped pairs from
the shipped openings, searching ``--visits`` visits a move (0: the policy alone), the
same seed for every point. Games go to ``DIR/eval-<budget>/<point>-<opponent>`` and a
match already played is not played again. ``--final-only`` plays only the last point.

Prints, per opponent, a table with one row per curve point and one column per run
(score, W/D/L): runs trained for the same wall-clock compare at equal minutes.

Usage: python -m bench.curves DIR [DIR ...] [--opponents greedy,fsf-d1,gnushogi-d1]
[--visits 64] [--games 20] [--workers 2] [--seed 0] [--final-only]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.budget import opponent_arguments
from keisei.evaluation import MatchResult
from workers import evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="bench.learning --save-curve folders")
    parser.add_argument("--opponents", default="greedy,fsf-d1,gnushogi-d1")
    parser.add_argument("--visits", type=int, default=64, help="search budget (0: the policy alone)")
    parser.add_argument("--games", type=int, default=20, help="games per point and opponent")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final-only", action="store_true", help="only each run's last point")
    return parser


def play(network: Path, opponent: str, output: Path, args: argparse.Namespace,
         name: str = "keisei") -> MatchResult:
    """One match (played unless its results are already there): ``network`` as ``name``
    against ``opponent``, with ``args.games``, ``workers``, ``seed`` and ``visits``."""
    results = output / "results.json"
    if not results.is_file():
        argv = ["--checkpoint", str(network), "--name", name, *opponent_arguments(opponent),
                "--games", str(args.games), "--workers", str(args.workers), "--seed",
                str(args.seed), "--output", str(output)]
        argv += ["--visits", str(args.visits)] if args.visits else []
        code = evaluate.main(argv)
        if code:
            raise SystemExit(f"keisei-eval failed with exit code {code}: {network} vs {opponent}")
    pairing = json.loads(results.read_text())["pairings"][0]
    return MatchResult(pairing["wins"], pairing["draws"], pairing["losses"])


def main() -> None:
    args = build_parser().parse_args()
    opponents = [item for item in args.opponents.split(",") if item]
    budget = f"{args.visits}v" if args.visits else "policy"
    curves: dict[str, list[dict[str, object]]] = {}
    for run in args.runs:
        index = Path(run) / "curve.json"
        if not index.is_file():
            raise SystemExit(f"{index} not found: make it with bench.learning --save-curve {run}")
        points = json.loads(index.read_text())
        curves[run] = points[-1:] if args.final_only else points
    table: dict[tuple[str, str, str], MatchResult] = {}
    for opponent in opponents:
        for run, points in curves.items():
            for point in points:
                name = str(point["name"])
                output = Path(run) / f"eval-{budget}" / f"{name}-{opponent.replace(':', '_')}"
                table[run, name, opponent] = play(Path(run) / f"{name}.pt", opponent, output, args)
    print(f"search budget: {budget}; {args.games} games per point and opponent "
          f"(colour-swapped pairs, seed {args.seed})")
    width = 34
    for opponent in opponents:
        print(f"\nagainst {opponent}:")
        print(f"{'point':>8} " + "".join(f"{Path(run).name[:width - 2]:<{width}}" for run in curves))
        rows = max(len(points) for points in curves.values())
        for row in range(rows):
            cells = []
            for run, points in curves.items():
                if row >= len(points):
                    cells.append("".ljust(width))
                    continue
                point = points[row]
                result = table[run, str(point["name"]), opponent]
                cells.append(f"{point['minutes']:4.1f}m {int(str(point['step'])) // 1000:5d}k "
                             f"{result.score:.3f} (+{result.wins} ={result.draws} "
                             f"-{result.losses})  ".ljust(width))
            print(f"{row + 1:>8} " + "".join(cells))


if __name__ == "__main__":
    main()
