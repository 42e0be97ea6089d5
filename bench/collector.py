"""Self-play collector speed with the default network: G=1 vs G=64 lock-step games.

Prints steps/s at each G, their ratio, and where the time goes (inference, rules,
encoding), on one torch thread (one actor per core is the deployment) and on all cores;
then what search targets cost: steps/s at each ``selfplay.search_share`` and
``search_visits`` against no search, measured in the same run.

Usage: python -m bench.collector [--seconds S] [--search-only]
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
            sink: CountingSink | CountingRecordSink | None = None,
            selfplay: SelfPlayConfig | None = None) -> tuple[float, Collector]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    selfplay = selfplay if selfplay is not None else SelfPlayConfig(games=games)
    collector = Collector(build_model(Config().model), selfplay,
                          sink if sink is not None else CountingSink(), precision=precision)
    collector.model.eval()
    for _ in range(3):  # warm-up
        collector.step(0)
    start_steps, started = collector.stats.steps, time.perf_counter()
    start = (collector.stats.inference_seconds, collector.stats.rules_seconds,
             collector.stats.encode_seconds, collector.stats.search_seconds)
    while time.perf_counter() - started < seconds:
        collector.step(0)
    elapsed = time.perf_counter() - started
    stats = collector.stats
    shares = (stats.inference_seconds - start[0], stats.rules_seconds - start[1],
              stats.encode_seconds - start[2])
    searched = (f"  search {(stats.search_seconds - start[3]) / elapsed:4.0%}"
                if selfplay.search_share else "")
    print(f"  G={games:3d} threads={threads}: {(stats.steps - start_steps) / elapsed:8.0f} steps/s   "
          f"inference {shares[0] / elapsed:4.0%}  rules+recording {shares[1] / elapsed:4.0%}  "
          f"encoding {shares[2] / elapsed:4.0%}{searched}")
    return (stats.steps - start_steps) / elapsed, collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--search-only", action="store_true", help="only the search-target costs")
    args = parser.parse_args()
    if not args.search_only:
        batching(args.seconds)
    search_targets(args.seconds)


def search_targets(seconds: float) -> None:
    """Steps/s with search targets against none, G=64, 1 thread, auto precision."""
    print("search targets (selfplay.search_share, search_visits), G=64, 1 thread, auto precision:")
    baseline, _ = measure(64, 1, seconds, "auto", selfplay=SelfPlayConfig(games=64))
    for share, visits in ((0.05, 16), (0.1, 8), (0.1, 16), (0.25, 16), (0.25, 32)):
        rate, _ = measure(64, 1, seconds, "auto", selfplay=SelfPlayConfig(
            games=64, search_share=share, search_visits=visits))
        print(f"    share {share:g} at {visits} visits: {rate / baseline:.3f}x the steps/s without")


def batching(seconds: float) -> None:
    """G=1 against G=64, and records-only against training data."""
    model = Config().model
    for precision in ("float32", "auto"):
        dtype = resolve_precision(precision, torch.device("cpu"))
        print(f"default network {model.blocks}x{model.channels}, precision {precision} "
              f"({dtype or 'float32'}):")
        for threads in sorted({1, os.cpu_count() or 1}):
            single, _ = measure(1, threads, seconds, precision)
            batched, _ = measure(64, threads, seconds, precision)
            print(f"  G=64 / G=1 at {threads} thread(s): {batched / single:.1f}x")
    print("an actor's collector (records only) against the learner's (with training data), "
          "G=64, 1 thread, auto precision, alternated twice:")
    rates: dict[str, list[float]] = {"training": [], "records": []}
    for _ in range(2):
        rates["training"].append(measure(64, 1, seconds, "auto", CountingSink())[0])
        rates["records"].append(measure(64, 1, seconds, "auto", CountingRecordSink())[0])
    training, records = (sum(values) / 2 for values in rates.values())
    print(f"  records only {records:.0f} steps/s, with training data {training:.0f}: "
          f"{records / training:.3f}x")


if __name__ == "__main__":
    main()
