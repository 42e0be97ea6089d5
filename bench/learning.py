"""Does training make the policy stronger? Win rate against a random player, before and after.

Trains from scratch in one process (sequential collection) for a fixed wall-clock
budget, then plays the untrained and the trained network (greedy over the masked
policy) against a uniformly random player: ``--eval-games`` games each, half with each
colour, from the same seeds. Prints wins/draws/losses, score and Elo against random.

Usage: python -m bench.learning [--minutes 10] [--eval-games 200] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import tempfile
import threading
import time

from keisei.config import load_config
from keisei.evaluation import play_against_random
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
    before = play_against_random(untrained, args.eval_games, seed=args.seed + 100, device=device,
                                 autocast_dtype=dtype)
    after = play_against_random(trainer.model, args.eval_games, seed=args.seed + 100, device=device,
                                autocast_dtype=dtype)
    print(f"network {config.model.blocks}x{config.model.channels}, {args.minutes:g} min, "
          f"{trainer.step:,} steps, {trainer.epoch} epochs, precision {dtype or 'float32'}")
    print(f"untrained vs random: {before}   win rate {before.wins / before.games:.3f}")
    print(f"trained   vs random: {after}   win rate {after.wins / after.games:.3f}")


async def _train_until_stopped(trainer: Trainer, callback: Callback) -> None:
    try:
        await train(trainer, [callback])
    except TrainingInterrupted:
        pass


if __name__ == "__main__":
    main()
