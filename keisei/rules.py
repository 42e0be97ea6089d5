"""The rules from the command line: ``python -m keisei.rules perft SFEN DEPTH`` counts the
legal-move tree (against the published counts), ``python -m keisei.rules play`` plays one
random game and prints its record (KIF, CSA or a USI position)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import cshogi

from keisei.kifu import to_csa, to_kif
from keisei.shogi import DEFAULT_MAX_PLIES, normalize_sfen, play_random_game


# --- perft -----------------------------------------------------------------------------
def perft(sfen: str, depth: int) -> int:
    """Count the leaf nodes of the legal-move tree of ``depth`` plies from ``sfen``.

    Counts every legal move, non-promotions into the zone included, as the published
    tables do (start position: 30, 900, 25 470, 719 731, 19 861 490).

    :raises InvalidSfenError: if the SFEN is bad.
    :raises ValueError: if ``depth`` is negative.
    """
    if depth < 0:
        raise ValueError(f"perft depth {depth} must be 0 or more")
    return _perft(cshogi.Board(normalize_sfen(sfen)), depth)


def _perft(board: cshogi.Board, depth: int) -> int:
    if depth == 0:
        return 1
    moves = list(board.legal_moves)
    if depth == 1:
        return len(moves)
    total = 0
    for move in moves:
        board.push(move)
        total += _perft(board, depth - 1)
        board.pop()
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keisei.rules perft SFEN DEPTH`` or ``python -m keisei.rules play``."""
    parser = argparse.ArgumentParser(prog="python -m keisei.rules", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    perft_parser = commands.add_parser("perft", help="count leaf nodes of the move tree")
    perft_parser.add_argument("sfen", help="an SFEN, or 'startpos'")
    perft_parser.add_argument("depth", type=int)
    play_parser = commands.add_parser("play", help="play one random game and print its record")
    play_parser.add_argument("--seed", type=int, default=None)
    play_parser.add_argument("--max-plies", type=int, default=DEFAULT_MAX_PLIES)
    play_parser.add_argument("--sfen", default=None, help="starting position (default: startpos)")
    play_parser.add_argument("--format", choices=("kif", "csa", "usi"), default="kif")
    args = parser.parse_args(argv)
    try:
        if args.command == "perft":
            started = time.perf_counter()
            nodes = perft(args.sfen, args.depth)
            elapsed = time.perf_counter() - started
            print(f"perft({args.depth}) = {nodes}  ({elapsed:.2f} s)")
            return 0
        game = play_random_game(args.seed, args.max_plies, args.sfen)
    except ValueError as exc:
        parser.error(str(exc))
    if args.format == "kif":
        sys.stdout.write(to_kif(game, ("Random", "Random")))
    elif args.format == "csa":
        sys.stdout.write(to_csa(game, ("Random", "Random")))
    else:
        print(game.to_position())
    print(f"# {game.ply} plies: {game.outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
