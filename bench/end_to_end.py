"""Sequential end-to-end training speed (collection + PPO update, wall clock).

Configuration fixed for comparison with the old pure-Python Keisei trainer: a 2-block ×
32-channel network, 256-step epochs, 10 PPO passes, minibatch 64. The old trainer is not
run here, so its figures are constants, not a baseline: it reported 40.6 steps/s end to
end, 58.8 steps/s collection and 2.3 s per update on some other machine, and made 17–19
steps/s end to end when run side by side on another 2-core CPU of our type. Ratios
against those constants are printed as such; only figures from one run compare exactly.

Usage: python -m bench.end_to_end [--epochs N] [--games G] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from keisei.config import load_config
from learner.app import Learner, LearnerOptions
from learner.reports import EpochReport

# The old trainer's own figures, from another machine; and its end-to-end range when run
# side by side on a CPU of our type (not on this one: constants, not a baseline).
OLD_END_TO_END, OLD_COLLECTION, OLD_UPDATE_SECONDS = 40.6, 58.8, 2.3
OLD_SIDE_BY_SIDE = (17.0, 19.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--games", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(None, [
            f"run.dir={run_dir}", f"run.threads={args.threads}", "model.blocks=2",
            "model.channels=32", "train.steps_per_epoch=256", "train.ppo_passes=10",
            "train.minibatch_size=64", f"train.total_steps={256 * args.epochs}",
            f"selfplay.games={args.games}", "train.max_policy_lag=1000", "display.mode=plain",
            "evaluation.every_epochs=0", f"checkpoint.every_epochs={args.epochs + 1}"])
        epochs: list[EpochReport] = []
        ended: list[float] = []  # when each epoch's report came (the final checkpoint is not timed)

        def keep(report: EpochReport) -> None:
            epochs.append(report)
            ended.append(time.perf_counter())

        with Learner(config, LearnerOptions(threads=args.threads)) as learner:
            started = time.perf_counter()
            learner.run(callbacks=[keep])
            wall = ended[-1] - started
            step = learner.trainer.step
    collect = sum(report.collect.collect_seconds for report in epochs)
    update = sum(report.update.update_seconds for report in epochs)
    collected = sum(report.collect.collected_steps for report in epochs)
    inference = sum(report.collect.inference_seconds for report in epochs)
    end_to_end = step / wall
    print(f"2x32 net, 256-step epochs, 10 passes, minibatch 64, {args.games} games, "
          f"{args.threads} threads, {len(epochs)} epochs")
    low, high = OLD_SIDE_BY_SIDE
    print(f"end to end   : {end_to_end:9.1f} steps/s   ({end_to_end / high:.1f}-{end_to_end / low:.1f}x "
          f"the old trainer's 17-19 measured side by side on another CPU of this type; "
          f"{end_to_end / OLD_END_TO_END:.1f}x its 40.6 from another machine)")
    print(f"collection   : {collected / collect:9.1f} steps/s   "
          f"({collected / collect / OLD_COLLECTION:5.1f}x the old trainer's 58.8, from another machine)")
    print(f"update       : {update / len(epochs):9.3f} s/epoch  "
          f"({OLD_UPDATE_SECONDS / (update / len(epochs)):5.1f}x faster than its 2.3 s, from another "
          f"machine); "
          f"{256 * 10 * len(epochs) / update:.0f} samples/s")
    print(f"time shares  : collect {collect / wall:.0%} (inference {inference / wall:.0%}), "
          f"update {update / wall:.0%}, other {(wall - collect - update) / wall:.0%}")
    lag = epochs[-1].update
    print(f"policy lag   : mean {lag.policy_lag_mean:.1f}, max {lag.policy_lag_max} versions")


if __name__ == "__main__":
    main()
