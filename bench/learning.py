"""Does training make the policy stronger? Elo against random and greedy, before and after.

Trains from scratch in one process (sequential collection) for a fixed wall-clock
budget, then plays the untrained and the trained network (its most probable legal move)
against ``random`` and the material player ``greedy``: ``--eval-games`` games each, in
colour-swapped pairs from the shipped openings, with the same seeds. Prints
wins/draws/losses, score and the Elo difference against each, and one Elo per player
fitted to all those games plus greedy against random (random = 0).

Usage: python -m bench.learning [--minutes 10] [--eval-games 200] [--save PATH.pt]
[--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import tempfile
import threading
import time

from keisei.checkpoint import save_policy
from keisei.config import load_config
from keisei.evaluation import (
    GreedyPlayer,
    Pairing,
    PolicyPlayer,
    RandomPlayer,
    fit_ratings,
    load_openings,
    play_match,
    tally,
)
from learner.main import build_trainer
from learner.trainer import Callback, Metrics, Trainer, TrainingInterrupted, train

# Chosen for learning speed on 2 CPU cores: a small net sees many games in the budget.
SETTINGS = ["model.blocks=4", "model.channels=48", "selfplay.games=64", "selfplay.max_plies=256",
            "train.steps_per_epoch=2048", "train.ppo_epochs=4", "train.minibatch_size=128",
            "train.learning_rate=0.001", "train.lr_schedule=constant", "train.ent_coef=0.01",
            "train.max_policy_lag=64", "train.total_steps=1000000000"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--eval-games", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--save", metavar="PATH.pt",
                        help="also save the trained network (for keisei-eval or keisei-usi)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(None, [*SETTINGS, f"run.dir={run_dir}", f"run.seed={args.seed}",
                                    *args.overrides])
        stop = threading.Event()
        trainer = build_trainer(config, stop)
        untrained = copy.deepcopy(trainer.model)
        deadline = time.monotonic() + 60 * args.minutes
        log: list[Metrics] = []

        def stop_at_deadline(metrics: Metrics) -> None:
            log.append(metrics)
            print(f"  epoch {metrics['epoch']:4d} step {metrics['step']:9,d} "
                  f"{metrics['steps_per_second']:6.0f} steps/s  len {metrics['mean_game_length']:5.1f}  "
                  f"B/W/D {metrics['black_win_rate']:.2f}/{metrics['white_win_rate']:.2f}/"
                  f"{metrics['draw_rate']:.2f}  value loss {metrics['value_loss']:.3f}", flush=True)
            if time.monotonic() >= deadline:
                stop.set()

        asyncio.run(_train_until_stopped(trainer, stop_at_deadline))
    device, dtype = trainer.device, trainer.autocast_dtype
    if args.save:
        save_policy(args.save, {"model": trainer.model.state_dict(), "config": config.to_dict(),
                                "counters": {"step": trainer.step, "policy_version": trainer.policy_version}})
    print(f"network {config.model.blocks}x{config.model.channels}, {args.minutes:g} min, "
          f"{trainer.step:,} steps, {trainer.epoch} epochs, precision {dtype or 'float32'}")
    openings, pairs = load_openings(), range((args.eval_games + 1) // 2)
    seed = args.seed + 100
    pairings = [Pairing("greedy", "random", tally(play_match(GreedyPlayer(), RandomPlayer(), openings,
                                                             pairs, seed=seed)))]
    print(f"greedy    vs random: {pairings[0].result}")
    for name, model in (("untrained", untrained), ("trained", trainer.model)):
        policy = PolicyPlayer(model, name, device=device, autocast_dtype=dtype)
        for opponent in (RandomPlayer(), GreedyPlayer()):
            result = tally(play_match(policy, opponent, openings, pairs, seed=seed))
            pairings.append(Pairing(name, opponent.name, result))
            print(f"{name:<9} vs {opponent.name}: {result}   win rate {result.wins / result.games:.3f}")
    ratings = fit_ratings(pairings)
    print("fitted Elo (random = 0): " + ", ".join(f"{name} {elo:+.0f}" for name, elo in
                                                   sorted(ratings.items(), key=lambda item: item[1])))


async def _train_until_stopped(trainer: Trainer, callback: Callback) -> None:
    try:
        await train(trainer, [callback])
    except TrainingInterrupted:
        pass


if __name__ == "__main__":
    main()
