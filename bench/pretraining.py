"""How strong does supervised pre-training make a network, in how much wall-clock?

Runs the three commands a user runs, in a work folder, each phase skipped when its
output is already there (so a measurement can be resumed or its evaluation repeated):

1. ``keisei-generate``: ``--generate-minutes`` of Fairy-Stockfish (``--engine-depth``)
   games against itself on ``--workers`` processes, as CSA;
2. ``keisei-pretrain``: ``--pretrain-minutes`` of training on them (the 4×48 network
   that ``bench.learning`` trains, so ``bench.learning --init-from`` can carry on);
3. ``keisei-eval``: the pre-trained network against ``random``, ``greedy`` and the
   ladder rungs named by ``--rungs`` (``--games`` each, colour-swapped pairs), playing
   its policy or, with ``--visits N`` / ``--movetime MS``, searching (results in
   ``WORK/eval`` or ``WORK/eval-<budget>``, so budgets can be compared on one network).
   ``--games 0`` skips it: a start for ``bench.learning --init-from`` and no more.

Prints the generation summary, the held-out move accuracy and losses before and after,
the network's path and the score table with Elo intervals. Then, for the PPO phase::

    python -m bench.learning --init-from WORK/pretrain/checkpoints/<newest>.pt

(the path printed after ``network:``), which applies the settings kept for self-play on a
start and trains these engine games beside it.

Usage: python -m bench.pretraining [--work DIR] [--generate-minutes 10]
[--pretrain-minutes 10] [--workers 2] [--engine-depth 4] [--games 100]
[--rungs fsf-skill-20-d1,fsf-d1,gnushogi-d1] [--visits N | --movetime MS]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from keisei.evaluation import MatchResult
from keisei.rundir import RunDir
from workers.evaluate import LADDER

SHAPE = ["model.blocks=4", "model.channels=48"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/bench-pretraining", help="work folder")
    parser.add_argument("--generate-minutes", type=float, default=10.0)
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engine-depth", type=int, default=4)
    parser.add_argument("--games", type=int, default=100,
                        help="evaluation games per opponent (0: no evaluation)")
    parser.add_argument("--rungs", default="fsf-skill-20-d1,fsf-d1,gnushogi-d1",
                        help="ladder rungs to play (names as keisei-eval --ladder prints them)")
    parser.add_argument("--visits", type=int, help="the network searches N visits a move")
    parser.add_argument("--movetime", type=int, metavar="MS",
                        help="the network searches MS milliseconds a move")
    return parser


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.games < 0:
        parser.error(f"--games must be 0 (no evaluation) or more, not {args.games}")
    rungs = {spec.name: spec for spec in LADDER}
    wanted = [name for name in args.rungs.split(",") if name]
    unknown = [name for name in wanted if name not in rungs]
    if unknown:  # before the minutes of generation and pre-training, not after
        parser.error(f"unknown rungs {unknown}; the ladder has {sorted(rungs)}")
    work = Path(args.work)
    budget = (["--visits", str(args.visits)] if args.visits else []) + (
        ["--movetime", str(args.movetime)] if args.movetime else [])
    suffix = "".join(f"-{args.visits}v" if args.visits else "") + (
        f"-{args.movetime}ms" if args.movetime else "")
    records, pretrain, evaluation = work / "records", work / "pretrain", work / f"eval{suffix}"
    bin_dir = Path(sys.executable).parent
    if not (records / "summary.json").is_file():
        run([str(bin_dir / "keisei-generate"), "--engine", "usi:fairy-stockfish", "--depth",
             str(args.engine_depth), "--minutes", str(args.generate_minutes), "--workers",
             str(args.workers), "--output", str(records), "--progress", "60"])
    if RunDir(pretrain).newest_checkpoint() is None or not (pretrain / "done").is_file():
        overrides = [*SHAPE, f"run.dir={pretrain}", f"pretrain.minutes={args.pretrain_minutes}",
                     "pretrain.epochs=100", "pretrain.validate_every=100000", "display.mode=plain",
                     "display.refresh_seconds=60"]
        resume = ["--resume"] if RunDir(pretrain).config.is_file() else [str(records)]
        run([str(bin_dir / "keisei-pretrain"), *resume,
             *[item for override in overrides for item in ("--set", override)]])
        (pretrain / "done").write_text("")
    checkpoint = RunDir(pretrain).newest_checkpoint()
    assert checkpoint is not None
    if args.games and not (evaluation / "results.json").is_file():
        opponents = ["--opponent", "random", "--opponent", "greedy"]
        run([str(bin_dir / "keisei-eval"), "--checkpoint", str(checkpoint), "--name", "pretrained",
             *budget, *opponents, "--games", str(args.games), "--workers", str(args.workers),
             "--output", str(evaluation / "basic")])
        for name in wanted:
            spec = rungs[name]
            engine = ["--opponent", spec.spec]
            engine += ["--depth", str(spec.depth)] if spec.depth else []
            engine += ["--byoyomi", str(spec.byoyomi_ms)] if spec.byoyomi_ms else []
            for key, value in spec.options.items():
                engine += ["--usi-option", f"{key}={value}"]
            run([str(bin_dir / "keisei-eval"), "--checkpoint", str(checkpoint), "--name",
                 "pretrained", *budget, *engine, "--games", str(args.games), "--workers",
                 str(args.workers), "--output", str(evaluation / name)])
        (evaluation / "results.json").write_text("{}\n")
    summary = json.loads((records / "summary.json").read_text())
    print(f"generated: {summary['games']} games, {summary['positions']} positions in "
          f"{summary['seconds']:.0f} s ({summary['plies_per_second']:.0f} plies/s), results "
          f"{summary['results']}")
    lines = [json.loads(line) for line in RunDir(pretrain).metrics.read_text().splitlines()]
    first, last = lines[0], lines[-1]
    print(f"pre-trained: {last['step']:,} positions ({last['epoch']:.2f} epochs) in "
          f"{last['seconds']:.0f} s; held-out top-1 {first['val_accuracy']:.3f} -> "
          f"{last['val_accuracy']:.3f}, policy loss {first['val_policy_loss']:.3f} -> "
          f"{last['val_policy_loss']:.3f}, value loss {first['val_value_loss']:.3f} -> "
          f"{last['val_value_loss']:.3f} on {last['val_positions']} positions")
    print(f"network: {checkpoint}")
    for results in sorted(evaluation.glob("*/results.json")):
        data = json.loads(results.read_text())
        for pairing in data["pairings"]:
            result = MatchResult(pairing["wins"], pairing["draws"], pairing["losses"])
            name = pairing["second"] if results.parent.name == "basic" else results.parent.name
            print(f"pretrained{' (' + suffix[1:] + ')' if suffix else ''} vs {name}: {result} "
                  f"over {result.games} games")


if __name__ == "__main__":
    main()
