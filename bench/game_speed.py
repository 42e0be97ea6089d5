"""Rules and encoding speed: raw cshogi vs Keisei's Game, and batched encoding.

Prints, from one process on one core:
  * raw cshogi random playout plies/s (legal-move list, random choice, push, 512-ply cap);
  * the same playout through ``keisei.shogi.Game`` (validation, repetition counting,
    entering-king and ply-limit adjudication) and its cost ratio to raw (goal <= 1.3);
  * batched observation + legal-mask encoding positions/s (goal >= 50 000).

Usage: python -m bench.game_speed [--plies N] [--batch G]
"""

from __future__ import annotations

import argparse
import random
import time

import cshogi

from keisei.encoding import BatchEncoder
from keisei.shogi import DEFAULT_MAX_PLIES, Game


def raw_playout(plies: int, seed: int) -> float:
    choose = random.Random(seed).choice
    board = cshogi.Board()
    played = 0
    started = time.perf_counter()
    while played < plies:
        board.reset()
        for _ in range(DEFAULT_MAX_PLIES):
            moves = list(board.legal_moves)
            if not moves:
                break
            board.push(choose(moves))
            played += 1
    return played / (time.perf_counter() - started)


def game_playout(plies: int, seed: int) -> float:
    choose = random.Random(seed).choice
    played = 0
    started = time.perf_counter()
    while played < plies:
        game = Game()
        while game.outcome is None:
            game.push(choose(game.legal_moves()))
        played += game.ply
    return played / (time.perf_counter() - started)


def sample_games(count: int, seed: int) -> list[Game]:
    rng = random.Random(seed)
    games = []
    while len(games) < count:
        game = Game()
        for _ in range(rng.randrange(0, 120)):
            if game.is_over:
                break
            game.push(rng.choice(game.legal_moves()))
        if not game.is_over:
            games.append(game)
    return games


def encoding_speed(batch: int, seconds: float) -> float:
    games = sample_games(batch, seed=1)
    encoder = BatchEncoder(batch)
    encoded = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        encoder.encode(games)
        encoded += batch
    return encoded / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plies", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    raw = max(raw_playout(args.plies, seed) for seed in (1, 2))
    through_game = max(game_playout(args.plies, seed) for seed in (1, 2))
    print(f"raw cshogi random playout : {raw:12,.0f} plies/s")
    print(f"through keisei Game       : {through_game:12,.0f} plies/s")
    print(f"Game cost / raw cost      : {raw / through_game:12.2f}x   (goal <= 1.30)")
    for batch in (1, args.batch):
        rate = encoding_speed(batch, seconds=2.0)
        print(f"encode obs+mask, batch {batch:3d}: {rate:10,.0f} positions/s   (goal >= 50,000)")


if __name__ == "__main__":
    main()
