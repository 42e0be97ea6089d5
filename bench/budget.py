"""Strength against search budget: one network, one opponent, several visit counts.

Plays ``--checkpoint`` against one opponent (a ladder rung by name, e.g. ``fsf-d1``, or
any ``keisei-eval --opponent`` spec) with its policy alone and then searching each of
``--visits`` (default 1, 16, 64, 256, 1024) visits a move, ``--games`` games each in
colour-swapped pairs from the shipped openings (``keisei-eval``, same seed, so every
budget plays the same openings). Each budget's games go to ``WORK/<budget>``; a budget
whose ``results.json`` is already there is not played again, so a measurement can be
resumed or extended.

Prints a table (budget, games, W/D/L, score, Elo difference with its 95% interval, and
the match's wall-clock per move played by the network) and, with matplotlib, writes
``WORK/budget.png``: the score against the budget on a log scale with its interval.

Usage: python -m bench.budget --checkpoint PATH [--opponent fsf-d1] [--visits 1,16,64,256,1024]
[--games 40] [--workers 2] [--work runs/bench-budget] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from keisei.elo import elo_interval, format_elo
from keisei.evaluation import MatchResult
from workers import evaluate
from workers.evaluate import LADDER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the network (checkpoint or policy file)")
    parser.add_argument("--opponent", default="fsf-d1",
                        help="a ladder rung's name (keisei-eval --ladder lists them) or a "
                             "keisei-eval --opponent spec")
    parser.add_argument("--visits", default="1,16,64,256,1024",
                        help="comma-separated visit counts (the policy alone is always played)")
    parser.add_argument("--games", type=int, default=40, help="games per budget")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/bench-budget", help="folder for the games")
    return parser


def opponent_arguments(opponent: str) -> list[str]:
    """``keisei-eval`` arguments for a rung name or a spec."""
    rungs = {spec.name: spec for spec in LADDER}
    spec = rungs.get(opponent)
    if spec is None:
        return ["--opponent", opponent]
    arguments = ["--opponent", spec.spec]
    arguments += ["--depth", str(spec.depth)] if spec.depth else []
    arguments += ["--byoyomi", str(spec.byoyomi_ms)] if spec.byoyomi_ms else []
    for key, value in spec.options.items():
        arguments += ["--usi-option", f"{key}={value}"]
    return arguments


def main() -> None:
    args = build_parser().parse_args()
    try:
        budgets = [0] + [int(item) for item in args.visits.split(",") if item]
    except ValueError:
        raise SystemExit(f"--visits {args.visits!r}: expected comma-separated integers") from None
    if any(visits < 1 for visits in budgets[1:]):
        raise SystemExit(f"--visits {args.visits!r}: every count must be at least 1")
    work = Path(args.work)
    rows = []
    for visits in budgets:
        folder = work / (f"{visits}v" if visits else "policy")
        results = folder / "results.json"
        timing = folder / "seconds.json"
        if not results.is_file():
            started = time.monotonic()
            argv = ["--checkpoint", args.checkpoint, "--name", "keisei",
                    *opponent_arguments(args.opponent), "--games", str(args.games),
                    "--workers", str(args.workers), "--seed", str(args.seed),
                    "--output", str(folder)]
            argv += ["--visits", str(visits)] if visits else []
            code = evaluate.main(argv)
            if code:
                raise SystemExit(f"keisei-eval failed with exit code {code} at {visits} visits")
            timing.write_text(json.dumps({"seconds": time.monotonic() - started}) + "\n")
        data = json.loads(results.read_text())
        pairing = data["pairings"][0]
        result = MatchResult(pairing["wins"], pairing["draws"], pairing["losses"])
        moves = sum((game["plies"] + (game["black"] == "keisei")) // 2 for game in data["games"])
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        rows.append((visits, result, seconds * args.workers / max(moves, 1)))
    print(f"{Path(args.checkpoint).name} against {args.opponent}, {args.games} games per budget "
          f"(colour-swapped pairs, seed {args.seed}, {args.workers} workers):")
    print(f"{'budget':>12} {'games':>6} {'+':>4} {'=':>4} {'-':>4} {'score':>6}  "
          f"{'Elo [95% interval]':<24} {'ms/move':>8}")
    for visits, result, per_move in rows:
        name = f"{visits} visits" if visits else "policy"
        print(f"{name:>12} {result.games:6d} {result.wins:4d} {result.draws:4d} {result.losses:4d} "
              f"{result.score:6.3f}  {format_elo(result.wins, result.draws, result.losses):<24} "
              f"{1000 * per_move:8.0f}")
    print("ms/move: the match's wall-clock x workers / the network's moves (the opponent's "
          "time included; the network searches the games of a worker together)")
    plot(rows, work / "budget.png", f"{Path(args.checkpoint).name} vs {args.opponent}")


def _score_of_elo(elo: float) -> float:
    """The expected score at an Elo difference (0 at -inf, 1 at +inf)."""
    return 1.0 / (1.0 + 10.0 ** (-elo / 400.0)) if math.isfinite(elo) else float(elo > 0)


def plot(rows: list[tuple[int, MatchResult, float]], path: Path, title: str) -> None:
    """Score against visits (log scale) with 95% intervals, if matplotlib is installed."""
    try:
        import matplotlib
    except ImportError:
        print("no matplotlib: no plot (pip install 'keisei[plot]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searched = [(visits, result) for visits, result, _ in rows if visits]
    figure, axes = plt.subplots(figsize=(6, 4))
    xs = [visits for visits, _ in searched]
    scores = [result.score for _, result in searched]
    bounds = [tuple(_score_of_elo(bound) for bound in elo_interval(result.wins, result.draws,
                                                                    result.losses))
              for _, result in searched]
    axes.errorbar(xs, scores, yerr=[[score - low for score, (low, _) in zip(scores, bounds, strict=True)],
                                    [high - score for score, (_, high) in zip(scores, bounds, strict=True)]],
                  marker="o", capsize=3, label="searching")
    policy = next((result for visits, result, _ in rows if not visits), None)
    if policy is not None:
        axes.axhline(policy.score, color="grey", linestyle="--", label="policy alone")
    axes.set_xscale("log", base=2)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("visits per move")
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
