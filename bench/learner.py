"""PPO update speed with the default network: training samples per second.

Collects one epoch of real self-play data, then times full PPO updates on it
(forward, backward, clipping, AdamW) at float32 and at the automatic precision.

Usage: python -m bench.learner [--updates N]
"""

from __future__ import annotations

import sys

if not __package__:  # run as a path, this file would be imported as the `learner` package
    sys.exit("run it as a module from the repository root: python -m bench.learner")

import argparse
import os
import tempfile
import threading
import time

from keisei.config import load_config
from learner.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=2)
    args = parser.parse_args()
    for precision in ("float32", "auto"):
        with tempfile.TemporaryDirectory() as run_dir:
            config = load_config(None, [f"run.dir={run_dir}", f"run.precision={precision}",
                                        "train.max_policy_lag=1000"])
            trainer = Trainer.build(config, threading.Event())
            trainer.collect()
            batch = trainer.buffer.take_epoch()
            samples, seconds = 0, 0.0
            for _ in range(args.updates):
                trainer.buffer.restore_epoch(batch)
                started = time.perf_counter()
                report = trainer.update()
                seconds += time.perf_counter() - started
                samples += batch.size * report.ppo_passes
        train = config.train
        print(f"default network {config.model.blocks}x{config.model.channels}, {os.cpu_count()} threads, "
              f"precision {precision} ({trainer.autocast_dtype or 'float32'}): "
              f"{samples / seconds:7.0f} samples/s  ({train.steps_per_epoch} steps x "
              f"{train.ppo_passes} passes, minibatch {train.minibatch_size}: {seconds / args.updates:.1f} s/update)")


if __name__ == "__main__":
    main()
