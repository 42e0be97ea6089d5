"""Games as the board shows them: the position before each ply and after the last, each
move in USI, and the players' names; replayed with ``keisei.shogi``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from keisei.errors import KeiseiError
from keisei.kifu import read_csa
from keisei.shogi import Game, describe_move
from learner.view.errors import WebError

MAX_GAME_BYTES = 1 << 20
"""The largest game file the server reads."""


@dataclass(frozen=True)
class LiveGame:
    """A game as the live board shows it. ``values`` are the value head's, one per ply
    played, from the mover's view (``movers``: 0 black, 1 white); ``result`` is None while
    it is being played."""

    key: str
    source: str
    start_sfen: str
    moves: tuple[int, ...]
    values: tuple[float, ...] = ()
    movers: tuple[int, ...] = ()
    result: str | None = None


def game_view(start_sfen: str, moves: Sequence[int], result: str | None) -> dict[str, Any]:
    """A game for the board: the position before each ply and after the last (SFEN),
    and each move in USI. The moves are replayed by the rules (no entering-king
    declaration, no ply limit: the record says how the game ended); a move they do not
    allow ends the replay there."""
    game = Game(start_sfen, max_plies=len(moves) + 1, entering_king=False)
    sfens, usis = [game.sfen()], []
    for move in moves:
        if game.outcome is not None or not game.is_legal(move):
            break
        usis.append(describe_move(move))
        game.push(move)
        sfens.append(game.sfen())
    return {"start_sfen": game.start_sfen, "moves": usis, "sfens": sfens, "result": result}


def live_view(game: LiveGame) -> dict[str, Any]:
    view = game_view(game.start_sfen, game.moves, game.result)
    # the value head's evaluation from black's view, a point per ply
    values = [(value if mover == 0 else -value) for value, mover in zip(game.values, game.movers,
                                                                          strict=False)]
    view.update(key=game.key, source=game.source, live=game.result is None,
                values=[round(v, 4) if math.isfinite(v) else None for v in values])
    return view


def read_game_file(path: Path) -> dict[str, Any]:
    """A CSA record, replayed with validation.

    :raises WebError: if it is too large or not a valid record.
    """
    size = path.stat().st_size
    if size > MAX_GAME_BYTES:
        raise WebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{path.name}: {size} bytes is more "
                       f"than the {MAX_GAME_BYTES} this server reads")
    try:
        game = read_csa(path.read_text(encoding="utf-8", errors="replace"))
    except KeiseiError as exc:
        raise WebError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{path.name}: {exc}") from exc
    names = _csa_names(path)
    view = game_view(game.start_sfen, game.moves, game_result(game))
    view.update(black=names[0], white=names[1])
    return view


def game_result(game: Game) -> str:
    return str(game.outcome) if game.outcome is not None else f"unfinished after {game.ply} plies"


def _csa_names(path: Path) -> tuple[str, str]:
    names = {"N+": "black", "N-": "white"}
    found = dict(names)
    try:
        with path.open(encoding="utf-8", errors="replace") as stream:
            for line in stream.read(4096).splitlines():
                if line[:2] in names:
                    found[line[:2]] = line[2:].strip()[:80]
    except OSError:
        pass
    return found["N+"], found["N-"]
