"""Make the opening set that evaluation matches start from (``keisei/openings.txt``).

Usage: ``python -m workers.openings [--engine fairy-stockfish] [--count 64] [--plies 8]
[--depth 8] [--seed 1] > keisei/openings.txt``.

Each line is a few plies of plausible play: at every ply the engine's top moves (MultiPV)
within ``--spread`` centipawns of its best are candidates and one is drawn at random. A
line is kept when a deeper search scores the final position within ``--balance``
centipawns of even, and no two lines are the same. Needs a USI engine with MultiPV,
e.g. Debian's fairy-stockfish.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

from workers.engines import START_TIMEOUT, EngineError, EngineProcess, resolve_command


def ranked_moves(engine: EngineProcess, moves: Sequence[str], depth: int) -> list[tuple[str, int]]:
    """(move, centipawns for the side to move) for the engine's MultiPV lines, best first."""
    engine.send("position startpos moves " + " ".join(moves) if moves else "position startpos",
                f"go depth {depth}")
    lines: dict[int, tuple[str, int]] = {}
    while True:
        line = engine.read_until(lambda text: text.startswith(("info", "bestmove")), 120.0, "bestmove")
        if line.startswith("bestmove"):
            return [lines[rank] for rank in sorted(lines)]
        words = line.split()
        if "pv" not in words or "score" not in words or "multipv" not in words:
            continue
        kind, value = words[words.index("score") + 1], int(words[words.index("score") + 2])
        score = value if kind == "cp" else (30_000 if value > 0 else -30_000)
        rank = int(words[words.index("multipv") + 1])
        lines[rank] = (words[words.index("pv") + 1], score)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.openings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="fairy-stockfish")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--plies", type=int, default=8)
    parser.add_argument("--depth", type=int, default=8, help="search depth while choosing moves")
    parser.add_argument("--check-depth", type=int, default=12, help="search depth of the balance check")
    parser.add_argument("--spread", type=int, default=40, help="centipawns from the best move")
    parser.add_argument("--balance", type=int, default=150, help="largest |score| kept")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    try:
        engine = EngineProcess(resolve_command(args.engine), args.engine)
        engine.send("usi")
        engine.read_until(lambda line: line == "usiok", START_TIMEOUT, "usiok")
        engine.send("setoption name MultiPV value 6", "isready")
        engine.read_until(lambda line: line == "readyok", START_TIMEOUT, "readyok")
        seen: set[tuple[str, ...]] = set()
        print(f"# {args.count} openings of {args.plies} plies by {args.engine}: MultiPV 6 at depth "
              f"{args.depth}, moves within {args.spread} cp of the best, final |score| <= "
              f"{args.balance} cp at depth {args.check_depth} (python -m workers.openings, seed {args.seed})")
        while len(seen) < args.count:
            moves: list[str] = []
            for _ in range(args.plies):
                ranked = ranked_moves(engine, moves, args.depth)
                best = ranked[0][1]
                moves.append(rng.choice([move for move, score in ranked if score >= best - args.spread]))
            final = ranked_moves(engine, moves, args.check_depth)[0][1]
            if abs(final) <= args.balance and tuple(moves) not in seen:
                seen.add(tuple(moves))
                print(" ".join(moves), flush=True)
        engine.close()
    except EngineError as exc:
        print(f"workers.openings: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
