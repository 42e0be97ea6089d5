"""Self-play collector speed with the default network: G=1 vs G=64 lock-step games.

Prints steps/s at each G, their ratio, and where the time goes (inference, rules,
encoding), on one torch thread (one actor per core is the deployment) and on all cores.

Usage: python -m bench.collector [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from keisei.config import Config, SelfPlayConfig
from keisei.model import build_model, resolve_precision
from keisei.records import FinishedGame, GameRecord
from keisei.selfplay import Collector


class CountingSink:
    """The learner's kind of sink: games with their training data."""

    def __init__(self) -> None:
        self.games = 0

    def put(self, game: FinishedGame) -> None:
        self.games += 1


class CountingRecordSink:
    """An actor's kind of sink: wire records only (no planes or masks are packed)."""

    def __init__(self) -> None:
        self.games = 0

    def put_record(self, record: GameRecord) -> None:
        self.games += 1


def measure(games: int, threads: int, seconds: float, precision: str,
            sink: CountingSink | CountingRecordSink | None = None) -> tuple[float, Collector]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    collector = Collector(build_model(Config().model), SelfPlayConfig(games=games),
                          sink if sink is not None else CountingSink(), precision=precision)
    collector.model.eval()
    for _ in range(3):  # warm-up
        collector.step(0)
    start_steps, started = collector.stats.steps, time.perf_counter()
    start = (collector.stats.inference_seconds, collector.stats.rules_seconds,
             collector.stats.encode_seconds)
    while time.perf_counter() - started < seconds:
        collector.step(0)
    elapsed = time.perf_counter() - started
    stats = collector.stats
    shares = (stats.inference_seconds - start[0], stats.rules_seconds - start[1],
              stats.encode_seconds - start[2])
    print(f"  G={games:3d} threads={threads}: {(stats.steps - start_steps) / elapsed:8.0f} steps/s   "
          f"inference {shares[0] / elapsed:4.0%}  rules+recording {shares[1] / elapsed:4.0%}  "
          f"encoding {shares[2] / elapsed:4.0%}")
    return (stats.steps - start_steps) / elapsed, collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    model = Config().model
    for precision in ("float32", "auto"):
        dtype = resolve_precision(precision, torch.device("cpu"))
        print(f"default network {model.blocks}x{model.channels}, precision {precision} "
              f"({dtype or 'float32'}):")
        for threads in sorted({1, os.cpu_count() or 1}):
            single, _ = measure(1, threads, args.seconds, precision)
            batched, _ = measure(64, threads, args.seconds, precision)
            print(f"  G=64 / G=1 at {threads} thread(s): {batched / single:.1f}x")
    print("an actor's collector (records only) against the learner's (with training data), "
          "G=64, 1 thread, auto precision, alternated twice:")
    rates: dict[str, list[float]] = {"training": [], "records": []}
    for _ in range(2):
        rates["training"].append(measure(64, 1, args.seconds, "auto", CountingSink())[0])
        rates["records"].append(measure(64, 1, args.seconds, "auto", CountingRecordSink())[0])
    training, records = (sum(values) / 2 for values in rates.values())
    print(f"  records only {records:.0f} steps/s, with training data {training:.0f}: "
          f"{records / training:.3f}x")


if __name__ == "__main__":
    main()
