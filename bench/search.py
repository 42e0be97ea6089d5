"""Search speed with the default network: visits/s against the network's own forward
positions/s at the same batch size, in the same run.

For each batch size B it times (1) the bare forward pass of B positions, and (2) B games
searched together (one leaf per game per network call, so each call carries B
positions), and prints visits/s, forward positions/s, their ratio (the share of
wall-clock left to the network; the rest is tree and rules work) and where the search's
time went. B = 1 is the single-game (USI) layout, with ``search.leaf_batch`` leaves per
call under virtual loss. The cache is off so that every visit costs a network position.

Usage: python -m bench.search [--seconds S] [--threads T] [--batches 1 8 32]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from keisei.config import Config
from keisei.encoding import NUM_ACTIONS
from keisei.evaluation import load_openings
from keisei.model import build_model, resolve_precision
from keisei.search import Search, network_evaluator
from keisei.shogi import Game


def positions(count: int) -> list[Game]:
    """Middle-game-ish positions: the shipped openings, cycled."""
    openings = load_openings()
    games = []
    for index in range(count):
        game = Game()
        for usi in openings[index % len(openings)]:
            game.push_usi(usi)
        games.append(game)
    return games


def forward_rate(evaluate: object, games: list[Game], batch: int, seconds: float) -> float:
    """Positions/s of the bare forward pass at ``batch``."""
    from keisei.encoding import BatchEncoder

    encoder = BatchEncoder(batch)
    observations, _ = encoder.encode(games[:batch])
    observations = np.ascontiguousarray(observations)
    evaluate(observations)  # type: ignore[operator]
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        evaluate(observations)  # type: ignore[operator]
        count += batch
    return count / (time.perf_counter() - started)


def search_rate(search: Search, games: list[Game], seconds: float) -> tuple[float, float]:
    """(visits/s, share of the time inside the network) for the games searched together.
    The rest of the time, divided by the visits, is what the tree and the rules cost a
    visit: a figure that does not depend on the network's speed."""
    inner = search.evaluate
    spent = [0.0]

    def timed(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        try:
            return inner(observations)
        finally:
            spent[0] += time.perf_counter() - started

    search.evaluate = timed
    search.search(games, visits=8)  # warm-up
    spent[0] = 0.0
    started = time.perf_counter()
    results = search.search(games, seconds=seconds)
    elapsed = time.perf_counter() - started
    visits = sum(result.nodes for result in results)
    return visits / elapsed, spent[0] / elapsed


def free_network(seed: int = 0) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """An ``evaluate`` that costs nothing: fixed random logits and values, so a search's
    whole time is tree and rules work (its trees are shaped like a real network's, with
    priors neither flat nor all on one move)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(4096, NUM_ACTIONS)).astype(np.float32)
    values = rng.uniform(-0.5, 0.5, size=4096).astype(np.float32)

    def evaluate(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = (observations.reshape(len(observations), -1)[:, :64].sum(axis=1) * 7919
                ).astype(np.int64) % len(values)
        return logits[rows], values[rows]

    return evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Config()
    model = build_model(config.model).eval()
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    evaluate = network_evaluator(model, "cpu", dtype)
    print(f"default network {config.model.blocks}x{config.model.channels}, {args.threads} "
          f"thread(s), precision {args.precision} ({dtype or 'float32'}), cache off, "
          f"leaf_batch {config.search.leaf_batch}:")
    for batch in args.batches:
        games = positions(batch)
        per_call = config.search.leaf_batch if batch == 1 else batch
        forward = forward_rate(evaluate, positions(per_call), per_call, args.seconds)
        search = Search(evaluate, replace(config.search, cache_positions=0))
        visits, network_share = search_rate(search, games, args.seconds)
        print(f"  {batch:3d} game(s) searched together ({per_call} positions a call): "
              f"{visits:7.0f} visits/s, forward {forward:7.0f} positions/s, ratio "
              f"{visits / forward:.2f}; time in the network {network_share:.0%}, tree and "
              f"rules {1 - network_share:.0%} ({(1 - network_share) / visits * 1e6:.0f} µs a "
              f"visit)")
    print("tree and rules alone (a network that costs nothing), visits/s and µs a visit:")
    for batch in args.batches:
        search = Search(free_network(), replace(config.search, cache_positions=0))
        visits, _ = search_rate(search, positions(batch), args.seconds)
        print(f"  {batch:3d} game(s): {visits:7.0f} visits/s, {1e6 / visits:4.0f} µs a visit")


if __name__ == "__main__":
    main()
