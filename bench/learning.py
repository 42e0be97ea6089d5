"""Does training make the policy stronger, and how fast? A learning curve in wall-clock.

Trains from scratch in one process (sequential collection) for a fixed wall-clock
budget, keeping a copy of the network at ``--curve`` evenly spaced points of it. After
training (so evaluation takes nothing from the budget) it plays each copy (its most
probable legal move) against ``random`` and the material player ``greedy`` in
colour-swapped pairs from the shipped openings, with the same seeds: ``--curve-games``
games each for the points along the way, ``--eval-games`` for the untrained and the
final network. Prints the curve (minutes, steps, score with W/D/L against each), the
Elo difference of the final network against each, and one Elo per player fitted to all
those games plus greedy against random (random = 0). ``--ladder`` then plays the final
network against every installed engine rung of ``keisei-eval --ladder``.

``--init-from CHECKPOINT`` starts from a pre-trained network (``keisei-pretrain``) instead
of random weights, as ``keisei-learner --init-from`` does: the curve's first point is that
network, and the final network also plays it directly (colour-swapped pairs), which says
whether PPO kept, lost or added to what pre-training taught. It then also applies the
settings kept for self-play on a start (``INIT_SETTINGS``: search targets as the signal,
small PPO steps, the KL penalty toward the start) and, where the checkpoint is one of
``keisei-pretrain``'s with its data folder beside, ``keisei-pipeline``'s: those engine games
trained beside self-play in place of the value anchor
(``learner.pipeline.engine_games_beside``); ``--set`` overrides them. As that pipeline's
self-play phase does, it then also makes new engine games beside self-play on
``--beside-workers`` processes (default 1 on two or more cores; Fairy-Stockfish depth 4,
``--beside-engine``) and trains them as they come, the learner taking the other cores;
``--records-beside DIR`` keeps those games (for a pre-training run on the same games).

From random weights the generator runs beside self-play too, with the same default: on two
cores its games turned 30 minutes that scored 0.105 against Fairy-Stockfish depth 1 at 256
visits into 0.945 (100 games each,
docs/results/2026-12-07-engine-games-beside-self-play-from-random-weights.md);
``--beside-workers 0`` measures self-play alone.

Each epoch's line carries the update's health (sampled and exact KL, clip fraction,
explained variance, passes), and a summary follows training: the median clip fraction,
the largest KL, the explained variance over the second half. ``--no-eval`` stops there.

Usage: python -m bench.learning [--minutes 10] [--eval-games 200] [--curve 5]
[--curve-games 100] [--ladder] [--ladder-games 100] [--save PATH.pt] [--save-curve DIR]
[--init-from CHECKPOINT] [--beside-workers N] [--beside-engine SPEC] [--records-beside DIR]
[--no-eval] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from keisei.checkpoint import save_policy
from keisei.config import load_config
from keisei.elo import fit_ratings
from keisei.evaluation import (
    GreedyPlayer,
    MatchResult,
    Pairing,
    PolicyPlayer,
    RandomPlayer,
    load_openings,
    play_match,
    tally,
)
from learner.app import Learner, LearnerOptions
from learner.pipeline import (
    BESIDE_SEED,
    ON_START,
    RECORDS_BESIDE,
    beside_command,
    engine_games_beside,
    generator_beside,
    missing_program,
    records_beside,
)
from learner.reports import EpochReport
from learner.trainer import Trainer
from workers import evaluate

# Chosen for learning speed on 2 CPU cores: a small net sees many games in the budget.
# Without batch norm and clipped to the policy before each update, 8 minutes scored 0.870
# against greedy where batch norm and plain clipping scored 0.630, side by side
# (docs/results/2026-12-05-no-batch-norm.md). One pass over each epoch's plies, not four:
# the update is then healthy (clip fraction 0.19, exact KL at most 0.03, explained variance
# +0.09) and the same 8 minutes see 2.7 times the games: 0.875 against greedy (0.870 with
# four passes), and 0.660 at 4 minutes where four passes scored 0.230
# (docs/results/2026-12-05-one-pass.md). A draw worth -0.5 to both players: 30 minutes from
# random weights then scored 1.000 against greedy and 0.060 against Fairy-Stockfish depth 1
# at 256 visits, where a draw worth 0 scored 0.985 and 0.030, and its self-play left the
# drawn games behind sooner (docs/results/2026-12-05-draw-penalty.md).
SETTINGS = ["model.blocks=4", "model.channels=48", "model.norm=none", "selfplay.games=64",
            "selfplay.max_plies=256", "train.steps_per_epoch=2048", "train.ppo_passes=1",
            "train.value_passes=1", "train.decoupled_clip=true", "train.minibatch_size=128",
            "train.learning_rate=0.001", "train.lr_schedule=constant", "train.ent_coef=0.01",
            "train.max_policy_lag=64", "train.draw_penalty=0.5", "train.total_steps=1000000000",
            "display.mode=plain", "evaluation.every_epochs=0", "checkpoint.every_epochs=1000000"]

# With --init-from (self-play on top of a pre-trained network), before --set: search targets
# as the improvement signal (a quarter of the plies searched with 64 Gumbel visits, the
# targets' cross-entropy weighted 4, the value target mixed a third with the search's root
# value), small healthy PPO steps, and the KL penalty toward the start
# (docs/results/2026-12-04-self-play-on-a-start.md: 0.620 against the start in 30 minutes).
# They are keisei-pipeline's self-play settings, less its checkpoints.
# The value learns in every pass there, as measured (the value anchor holds it), the ratio
# is clipped to the policy that played, and the network is keisei-pretrain's, with batch norm.
INIT_SETTINGS = [*(item for item in ON_START if not item.startswith("checkpoint.")),
                 "train.value_passes=0", "train.decoupled_clip=false", "model.norm=batch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget (wall-clock)")
    parser.add_argument("--eval-games", type=int, default=200,
                        help="games of the untrained and final networks against each opponent")
    parser.add_argument("--curve", type=int, default=5,
                        help="points on the learning curve (the last is the final network)")
    parser.add_argument("--curve-games", type=int, default=100,
                        help="games against each opponent at the earlier curve points")
    parser.add_argument("--ladder", action="store_true",
                        help="also play the final network against the installed engine rungs")
    parser.add_argument("--ladder-games", type=int, default=100, help="games per ladder rung")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from this pre-trained network instead of random weights")
    parser.add_argument("--beside-workers", type=int, metavar="N",
                        help="engine-game processes beside self-play, their games trained as "
                             "they come (default 1 on two or more cores; 0: self-play alone)")
    parser.add_argument("--beside-engine", default="usi:fairy-stockfish", metavar="SPEC",
                        help="their engine (keisei-generate --engine; usi: ones at depth 4)")
    parser.add_argument("--records-beside", metavar="DIR",
                        help="keep the games made beside self-play in DIR (default: a "
                             "temporary folder)")
    parser.add_argument("--save", metavar="PATH.pt",
                        help="also save the trained network (for keisei-eval or keisei-usi)")
    parser.add_argument("--no-eval", action="store_true",
                        help="train and print the update's health only: no games afterwards")
    parser.add_argument("--save-curve", metavar="DIR",
                        help="also save every curve point's network as DIR/curveN.pt (the final "
                             "one as DIR/trained.pt), named by minutes and steps in DIR/curve.json, "
                             "to evaluate them later (e.g. keisei-eval --visits against engines)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    args.beside_workers = beside_workers(args)
    with tempfile.TemporaryDirectory() as run_dir:
        start = [*INIT_SETTINGS, *engine_games_beside(args.init_from)] if args.init_from else []
        beside: AbstractContextManager[object] = nullcontext()
        if args.beside_workers:
            records = Path(args.records_beside or Path(run_dir) / RECORDS_BESIDE)
            records.mkdir(parents=True, exist_ok=True)
            start += records_beside(records, args.beside_workers)
            generate = beside_command(args.beside_engine, 4, args.beside_workers,
                                      args.minutes + 1, BESIDE_SEED + args.seed, records)
            print("beside self-play: " + " ".join(generate), flush=True)
            beside = generator_beside(generate, records)
        config = load_config(None, [*SETTINGS, *start,
                                    f"run.dir={run_dir}", f"run.seed={args.seed}", *args.overrides])
        with beside, Learner(config, LearnerOptions(init_from=args.init_from)) as learner:
            trainer = learner.trainer
            untrained = copy.deepcopy(trainer.model)
            updates: list[EpochReport] = []
            curve = _train_with_curve(learner, 60 * args.minutes, max(args.curve, 1), updates)
    if trainer.supervised_records is not None:
        print(f"engine games made beside self-play: {trainer.supervised_records.games:,} training "
              f"games read ({trainer.supervised_records.held_out:,} held out), "
              f"{len(trainer.supervised_records):,} training positions", flush=True)
    print(f"network {config.model.blocks}x{config.model.channels}, {args.minutes:g} min, "
          f"{trainer.step:,} steps, {trainer.epoch} epochs, "
          f"precision {trainer.autocast_dtype or 'float32'}", flush=True)
    print(health(updates), flush=True)
    policy = {"model": trainer.model.state_dict(), "config": config.to_dict(),
              "counters": {"step": trainer.step, "policy_version": trainer.policy_version}}
    if args.save:  # before any game, so that --no-eval saves too
        save_policy(Path(args.save), policy)
    if args.save_curve:
        _save_curve(Path(args.save_curve), curve, config.to_dict())
    if args.no_eval:
        return
    pairings = _evaluate(args, trainer, untrained, curve)
    ratings = fit_ratings(pairings)
    print("fitted Elo (random = 0): " + ", ".join(f"{name} {elo:+.0f}" for name, elo in
                                                   sorted(ratings.items(), key=lambda item: item[1])))
    if not args.ladder:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.save or Path(folder) / "trained.pt")
        if not args.save:  # saved above otherwise
            save_policy(path, policy)
        evaluate.main(["--checkpoint", str(path), "--name", "trained", "--ladder",
                       "--games", str(args.ladder_games), "--seed", str(args.seed + 100),
                       "--output", str(Path(folder) / "ladder")])


def beside_workers(args: argparse.Namespace) -> int:
    """The engine-game processes to run beside self-play: ``--beside-workers``, else the
    default (1 on two or more cores, from a start or from random weights). Exits naming the
    problem where the count is negative or the engine is not installed."""
    workers: int = args.beside_workers
    if workers is None:
        workers = 1 if (os.cpu_count() or 1) >= 2 else 0
    if workers < 0:
        raise SystemExit("bench.learning: --beside-workers must be at least 0")
    program = missing_program(args.beside_engine) if workers else None
    if program is not None:
        raise SystemExit(f"bench.learning: --beside-engine {args.beside_engine}: engine program "
                         f"{program!r} is not on PATH or in /usr/games (or --beside-workers 0)")
    return workers


def _save_curve(folder: Path, curve: list[tuple[float, int, nn.Module]],
                config: dict[str, Any]) -> None:
    """Every curve point's network as a policy file, and what each one is."""
    folder.mkdir(parents=True, exist_ok=True)
    points = []
    for index, (minutes, step, model) in enumerate(curve, 1):
        name = "trained" if index == len(curve) else f"curve{index}"
        save_policy(folder / f"{name}.pt", {"model": model.state_dict(), "config": config,
                                            "counters": {"step": step, "policy_version": 0}})
        points.append({"name": name, "minutes": round(minutes, 2), "step": step})
    (folder / "curve.json").write_text(json.dumps(points, indent=1) + "\n")
    print(f"curve networks saved in {folder}")


def health(reports: list[EpochReport]) -> str:
    """The update's health over a run's epochs: the clip fraction's median and largest, the
    exact and sampled KLs' medians and largest, the explained variance's median over the
    second half, the passes that ran, and how many epochs broke each of the limits
    (median clip fraction 0.30, KL 1, explained variance 0)."""
    if not reports:
        return "update health: no epoch finished"
    updates = [report.update for report in reports]

    def column(name: str, rows: list[Any] = updates) -> np.ndarray:
        return np.array([getattr(update, name) for update in rows], dtype=np.float64)

    clip, exact, approx = column("clipfrac"), column("exact_kl"), column("approx_kl")
    variance = column("explained_variance", updates[len(updates) // 2:])
    return (f"update health over {len(updates)} epochs: clip fraction median "
            f"{np.median(clip):.3f} (max {clip.max():.3f}); exact KL median "
            f"{np.nanmedian(exact):.4f}, max {np.nanmax(exact):.4f} ({int((exact > 1).sum())} "
            f"epochs above 1); sampled KL median {np.median(approx):.4f}, max "
            f"{approx.max():.4g}; explained variance median over the second half "
            f"{np.nanmedian(variance):+.3f} (last {updates[-1].explained_variance:+.3f}); "
            f"passes {column('ppo_passes').mean():.2f} a epoch")


def _train_with_curve(learner: Learner, budget: float, points: int,
                      reports: list[EpochReport]) -> list[tuple[float, int, nn.Module]]:
    """Train until ``budget`` seconds have passed, appending each epoch's report to
    ``reports``; return (minutes, step, network copy) at each of ``points`` evenly spaced
    moments, the final network last."""
    started = time.monotonic()
    trainer = learner.trainer
    curve: list[tuple[float, int, nn.Module]] = []

    def log_and_keep(report: EpochReport) -> None:
        elapsed = time.monotonic() - started
        reports.append(report)
        update, games = report.update, report.games
        print(f"  epoch {report.epoch:4d} step {report.step:9,d} "
              f"{report.steps_per_second:6.0f} steps/s  len {games.mean_game_length:5.1f}  "
              f"B/W/D {games.black_win_rate:.2f}/{games.white_win_rate:.2f}/"
              f"{games.draw_rate:.2f}  value loss {update.value_loss:.3f}  "
              f"entropy {update.entropy:.2f}  kl {update.approx_kl:.3f} exact {update.exact_kl:.3f}  "
              f"clip {update.clipfrac:.2f}  ev {update.explained_variance:+.2f}  "
              f"passes {update.ppo_passes}  lag {update.policy_lag_mean:.1f}"
              + "".join(f"  {term}" for term in update.extra_terms())
              + (f"  pool {report.pool.size} score {report.pool.score:.2f} in {report.pool.games}"
                 if report.pool is not None else "")
              + (f"  anchor v{report.anchor.anchor_version}" + (
                  f" (gate {report.anchor.anchor_gate_score:.2f} in "
                  f"{report.anchor.anchor_gate_games}{', moved' if report.anchor.anchor_moved else ''})"
                  if report.anchor.anchor_gate_games else "")
                 if report.anchor is not None else ""), flush=True)
        if elapsed >= budget:
            learner.stop.set()
        elif elapsed >= budget * (len(curve) + 1) / points:
            curve.append((elapsed / 60, trainer.step, copy.deepcopy(trainer.model)))

    learner.run(callbacks=[log_and_keep])  # interrupted by the stop at the budget's end
    curve.append(((time.monotonic() - started) / 60, trainer.step, trainer.model))
    return curve


def _evaluate(args: argparse.Namespace, trainer: Trainer, untrained: nn.Module,
              curve: list[tuple[float, int, nn.Module]]) -> list[Pairing]:
    """Print the curve and the final network's Elo; return every pairing played."""
    openings = load_openings()
    seed = args.seed + 100

    def match(model: nn.Module, name: str, opponent: RandomPlayer | GreedyPlayer,
              games: int) -> MatchResult:
        policy = PolicyPlayer(model, name, device=trainer.device, autocast_dtype=trainer.autocast_dtype)
        return tally(play_match(policy, opponent, openings, range((games + 1) // 2), seed=seed))

    baseline = tally(play_match(GreedyPlayer(), RandomPlayer(), openings,
                                range((args.eval_games + 1) // 2), seed=seed))
    pairings = [Pairing("greedy", "random", baseline)]
    print(f"greedy vs random: {baseline}")
    print(f"{'minutes':>7} {'steps':>10}  {'vs random':<28} {'vs greedy':<28}")
    first = "initial" if args.init_from else "untrained"
    points = [(0.0, 0, untrained, first, args.eval_games)]
    points += [(minutes, step, model, f"curve{index}", args.curve_games)
               for index, (minutes, step, model) in enumerate(curve[:-1], 1)]
    minutes, step, model = curve[-1]
    points.append((minutes, step, model, "trained", args.eval_games))
    for minutes, step, model, name, games in points:
        results = [match(model, name, opponent, games) for opponent in (RandomPlayer(), GreedyPlayer())]
        pairings += [Pairing(name, opponent, result)
                     for opponent, result in zip(("random", "greedy"), results, strict=True)]
        print(f"{minutes:7.1f} {step:10,d}  " + " ".join(
            f"{result.score:.3f} (+{result.wins} ={result.draws} -{result.losses})".ljust(28)
            for result in results), flush=True)
    for opponent, result in zip(("random", "greedy"), [p.result for p in pairings[-2:]], strict=True):
        print(f"trained vs {opponent}: {result}")
    if args.init_from:
        final = PolicyPlayer(model, "trained", device=trainer.device,
                             autocast_dtype=trainer.autocast_dtype)
        initial = PolicyPlayer(untrained, "initial", device=trainer.device,
                               autocast_dtype=trainer.autocast_dtype)
        direct = tally(play_match(final, initial, openings, range((args.eval_games + 1) // 2),
                                  seed=seed))
        pairings.append(Pairing("trained", "initial", direct))
        print(f"trained vs initial: {direct}")
    return pairings


if __name__ == "__main__":
    main()
