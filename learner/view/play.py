"""``keisei-play CHECKPOINT_OR_RUN_DIR``: play the network in a browser.

Serves a board on 127.0.0.1 (``--address``) where a person plays a Keisei network that
searches (``keisei.search``, ``--movetime`` milliseconds a move or ``--visits``; the page
may choose its own time per move, up to ``MAX_MOVETIME_MS``). A run directory stands for
its newest checkpoint. Each page plays its own game:

* ``POST /api/games`` ``{"side": "black"|"white", "movetime": MS}``: a new game (201);
* ``GET /api/games/ID``: its state (position, moves, whose turn, the legal moves when it
  is the person's, the engine's last evaluation and principal variation, the result);
* ``POST /api/games/ID/move`` ``{"move": "7g7f"}``: the person's move in USI; an illegal
  one is refused (400) with the reason, and the game is unchanged;
* ``POST /api/games/ID/resign``;
* ``GET /api/games/ID/record.kif`` and ``record.csa``: the game as a file.

The engine thinks on a thread of its own, one search at a time for the whole server;
the page polls the state while it does. Nothing a client sends can exhaust the server:
at most ``MAX_GAMES`` games (the one unseen longest is dropped for a new one), request
bodies of at most ``MAX_BODY`` bytes, games of at most ``MAX_PLIES`` plies, and a search
whose page has not asked for ``ABANDON_SECONDS`` is stopped (the page went away). Like
the web view it answers every error as JSON and refuses a ``Host`` header that names
another site (DNS rebinding). Exit codes: 0 after Ctrl-C, 2 for a bad argument, a
checkpoint that does not load or an address in use.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import cshogi
import torch

from keisei.checkpoint import CheckpointError, resolve_checkpoint
from keisei.cli import add_version, setup_logging
from keisei.config import SearchConfig
from keisei.errors import GameOverError, IllegalMoveError
from keisei.evaluation import load_policy
from keisei.kifu import to_csa, to_kif
from keisei.search import Search, SearchResult, network_evaluator
from keisei.shogi import Color, Game, Outcome, Termination
from learner.view.address import is_loopback, parse_address
from learner.view.errors import WebError
from learner.view.http import JsonHandler, allowed_host_names

logger = logging.getLogger(__name__)

MAX_GAMES = 8
MAX_BODY = 1024
MAX_PLIES = 512
MAX_MOVETIME_MS = 30_000
ABANDON_SECONDS = 10.0
"""A search whose page has not asked for the game this long is stopped."""
FORGET_SECONDS = 3600.0
"""A game nobody has asked for this long is dropped."""
DEFAULT_ADDRESS = "127.0.0.1:8081"
ASSETS = {"/": ("play.html", "text/html; charset=utf-8"),
          "/play.js": ("play.js", "text/javascript; charset=utf-8"),
          "/play.css": ("play.css", "text/css; charset=utf-8")}


USI_MOVE = re.compile(r"^(?:([1-9])([a-i])([1-9])([a-i])(\+?)|([PLNSGBR])\*([1-9])([a-i]))$")
DROPPED = {"P": (cshogi.PAWN, 0), "L": (cshogi.LANCE, 1), "N": (cshogi.KNIGHT, 2),
           "S": (cshogi.SILVER, 3), "G": (cshogi.GOLD, 4), "B": (cshogi.BISHOP, 5),
           "R": (cshogi.ROOK, 6)}
"""A drop's letter: cshogi's piece type and its place in a hand."""


def _square(file: str, rank: str) -> int:
    return (int(file) - 1) * 9 + "abcdefghi".index(rank)


def why_illegal(game: Game, usi: str) -> str:
    """Why ``usi`` cannot be played in ``game``'s position, in words."""
    found = USI_MOVE.match(usi)
    if found is None:
        return f"{usi!r} is not a move in USI notation (7g7f, P*5e, 8h2b+)"
    board = game.board
    mover = 0 if board.turn == cshogi.BLACK else 1
    if found.group(6):  # a drop
        letter, file, rank = found.group(6), found.group(7), found.group(8)
        kind, place = DROPPED[letter]
        target = _square(file, rank)
        if board.pieces_in_hand[mover][place] == 0:
            return f"{usi}: you have no {letter} in hand"
        if board.piece(target) != 0:
            return f"{usi}: {file}{rank} is not empty"
        own_pawn = cshogi.BPAWN if mover == 0 else cshogi.WPAWN
        if letter == "P" and any(board.piece(_square(file, r)) == own_pawn for r in "abcdefghi"):
            return f"{usi}: a second unpromoted pawn on file {file} (nifu)"
        move = board.drop_move(target, kind)
        last = "a" if mover == 0 else "i"
        if letter == "P" and rank != last:
            board.push(move)
            mates = board.is_game_over()
            board.pop()
            if mates:
                return f"{usi}: a pawn dropped to give mate is not allowed (uchifuzume)"
    else:
        origin = _square(found.group(1), found.group(2))
        move = board.move(origin, _square(found.group(3), found.group(4)), bool(found.group(5)))
    if not board.is_pseudo_legal(move):
        if found.group(6):
            return f"{usi}: that piece could never move again from there"
        return f"{usi}: no piece of yours moves so" + (" (or it may not promote there)"
                                                        if found.group(5) else "")
    return f"{usi}: it would leave your king in check"


class PlayGame:
    """One page's game: the person's side, the engine's last search and its thread."""

    def __init__(self, human: Color, movetime_ms: int, max_plies: int = MAX_PLIES) -> None:
        self.id = secrets.token_urlsafe(12)
        self.game = Game(max_plies=max_plies)
        self.human = human
        self.movetime_ms = movetime_ms
        self.seen = time.monotonic()
        self.stop = threading.Event()
        self.thinking = False
        self.engine: dict[str, Any] | None = None  # the last search's figures
        self.error: str | None = None

    def state(self) -> dict[str, Any]:
        game = self.game
        human_turn = not game.is_over and not self.thinking and game.side_to_move is self.human
        return {"id": self.id, "sfen": game.sfen(), "start": game.start_sfen,
                "moves": [cshogi.move_to_usi(move) for move in game.moves],
                "human": str(self.human), "turn": str(game.side_to_move),
                "thinking": self.thinking, "over": game.is_over,
                "result": str(game.outcome) if game.outcome is not None else None,
                "winner": (str(game.outcome.winner) if game.outcome is not None
                           and game.outcome.winner is not None else None),
                "legal": ([cshogi.move_to_usi(move) for move in game.legal_moves()]
                          if human_turn else []),
                "movetime": self.movetime_ms, "engine": self.engine, "error": self.error}


class PlayServer(ThreadingHTTPServer):
    """The games and the one engine (see the module docstring)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], model: torch.nn.Module, name: str,
                 movetime_ms: int, visits: int | None, device: str = "cpu",
                 max_plies: int = MAX_PLIES) -> None:
        self.name = name
        self.max_plies = max_plies
        self.movetime_ms = movetime_ms
        self.visits = visits
        self.search = Search(network_evaluator(model, device), SearchConfig())
        self.games: dict[str, PlayGame] = {}
        self.lock = threading.Lock()  # the games table
        self.engine_lock = threading.Lock()  # one search at a time
        self.bound_host = address[0]
        self.allowed_hosts = allowed_host_names()
        self.closing = threading.Event()
        self._assets: dict[str, bytes] = {}
        super().__init__(address, _Handler)
        self._reaper = threading.Thread(target=self._reap, name="keisei-play-reaper", daemon=True)
        self._reaper.start()

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def asset(self, name: str) -> bytes:
        if name not in self._assets:
            self._assets[name] = resources.files("learner.view").joinpath(
                "play_assets", name).read_bytes()
        return self._assets[name]

    # --- games ---------------------------------------------------------------------------
    def new_game(self, body: dict[str, Any]) -> dict[str, Any]:
        side = body.get("side", "black")
        if side not in ("black", "white"):
            raise WebError(HTTPStatus.BAD_REQUEST, f"side {str(side)[:20]!r}: black or white")
        movetime = body.get("movetime", self.movetime_ms)
        if not isinstance(movetime, int) or isinstance(movetime, bool) \
                or not 10 <= movetime <= MAX_MOVETIME_MS:
            raise WebError(HTTPStatus.BAD_REQUEST, f"movetime {str(movetime)[:20]!r}: a whole "
                           f"number of milliseconds from 10 to {MAX_MOVETIME_MS}")
        game = PlayGame(Color(side), movetime, self.max_plies)
        with self.lock:
            while len(self.games) >= MAX_GAMES:  # the one unseen longest makes room
                oldest = min(self.games.values(), key=lambda item: item.seen)
                oldest.stop.set()
                del self.games[oldest.id]
            self.games[game.id] = game
        if game.game.side_to_move is not game.human:
            self._think(game)
        return self.state(game)

    def state(self, game: PlayGame) -> dict[str, Any]:
        """A game's state, read under the lock the engine's move is played under."""
        with self.lock:
            return game.state()

    def get(self, game_id: str) -> PlayGame:
        with self.lock:
            game = self.games.get(game_id)
        if game is None:
            raise WebError(HTTPStatus.NOT_FOUND, f"game {game_id[:40]!r}: no such game here "
                           "(it may have been dropped; start a new one)")
        game.seen = time.monotonic()
        return game

    def move(self, game: PlayGame, body: dict[str, Any]) -> dict[str, Any]:
        usi = body.get("move")
        if not isinstance(usi, str) or len(usi) > 8:
            raise WebError(HTTPStatus.BAD_REQUEST, "move: a USI move is needed, e.g. 7g7f")
        with self.lock:
            if game.game.is_over:
                raise WebError(HTTPStatus.CONFLICT, f"the game is over ({game.game.outcome})")
            if game.thinking or game.game.side_to_move is not game.human:
                raise WebError(HTTPStatus.CONFLICT, "it is the engine's turn")
            try:
                game.game.push_usi(usi)
            except IllegalMoveError:
                raise WebError(HTTPStatus.BAD_REQUEST, why_illegal(game.game, usi)) from None
            except GameOverError as exc:
                raise WebError(HTTPStatus.CONFLICT, str(exc)) from None
        if not game.game.is_over:
            self._think(game)
        return self.state(game)

    def resign(self, game: PlayGame) -> dict[str, Any]:
        """The person resigns (on either turn: a search under way is stopped)."""
        with self.lock:
            if not game.game.is_over:
                game.stop.set()
                game.game.end(Outcome(game.human.opponent, Termination.RESIGNATION))
        return self.state(game)

    def resume(self, game: PlayGame) -> None:
        """A page is back for a game whose search was stopped when it went: think again."""
        with self.lock:
            waiting = (not game.game.is_over and not game.thinking
                       and game.game.side_to_move is not game.human)
        if waiting:
            self._think(game)

    def _think(self, game: PlayGame) -> None:
        game.thinking = True
        game.stop.clear()
        threading.Thread(target=self._engine_move, args=(game,), name="keisei-play-engine",
                         daemon=True).start()

    def _engine_move(self, game: PlayGame) -> None:
        try:
            with self.engine_lock:
                if game.stop.is_set() or self.closing.is_set():
                    return
                started = time.monotonic()
                result = self.search.search([game.game], self.visits, game.movetime_ms / 1000,
                                            stop=game.stop)[0]
                seconds = time.monotonic() - started
            with self.lock:
                if game.stop.is_set() and time.monotonic() - game.seen > ABANDON_SECONDS:
                    return  # the page went away: no move for nobody
                if not game.game.is_over:
                    game.game.push(result.move)
                    game.engine = describe(result, seconds)
        except Exception as exc:  # the page must learn the engine failed, not wait forever
            logger.exception("the engine failed in game %s", game.id)
            game.error = f"the engine failed: {exc}"
        finally:
            game.thinking = False

    def _reap(self) -> None:
        while not self.closing.wait(1.0):
            now = time.monotonic()
            with self.lock:
                for game in list(self.games.values()):
                    if game.thinking and now - game.seen > ABANDON_SECONDS:
                        game.stop.set()  # its page is gone
                    if now - game.seen > FORGET_SECONDS:
                        game.stop.set()
                        del self.games[game.id]

    def server_close(self) -> None:
        self.closing.set()
        with self.lock:
            for game in self.games.values():
                game.stop.set()
        super().server_close()


def describe(result: SearchResult, seconds: float) -> dict[str, Any]:
    """The engine's figures for the page: its move, value (from the engine's side, -1 lost
    ... 1 won),
    the principal variation in USI, visits and seconds."""
    return {"move": cshogi.move_to_usi(result.move), "value": round(float(result.value), 3),
            "pv": [cshogi.move_to_usi(move) for move in result.principal_variation[:12]],
            "visits": int(result.visits.sum()), "seconds": round(seconds, 2),
            "mate": result.mate}


class _Handler(JsonHandler):
    server: PlayServer

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise WebError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length > MAX_BODY:
            self.close_connection = True
            raise WebError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"a request body of {length} bytes; at most {MAX_BODY}")
        data = self.rfile.read(length) if length > 0 else b""
        if not data:
            return {}
        try:
            value = json.loads(data)
        except ValueError:
            raise WebError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(value, dict):
            raise WebError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return value

    def _serve(self, method: str) -> None:
        try:
            self.check_host()
            path = urlsplit(self.path).path
            body = method != "HEAD"
            parts = [part for part in path.split("/") if part]
            if method in ("GET", "HEAD") and path in ASSETS:
                name, kind = ASSETS[path]
                self.send_data(self.server.asset(name), kind, body=body)
            elif method in ("GET", "HEAD") and parts == ["api", "engine"]:
                server = self.server
                self.send_json({"name": server.name, "movetime": server.movetime_ms,
                                 "visits": server.visits, "max_movetime": MAX_MOVETIME_MS},
                                body=body)
            elif method == "POST" and parts == ["api", "games"]:
                self.send_json(self.server.new_game(self._body()), HTTPStatus.CREATED)
            elif len(parts) >= 3 and parts[:2] == ["api", "games"]:
                game = self.server.get(parts[2])
                action = parts[3:]
                if method in ("GET", "HEAD") and not action:
                    self.server.resume(game)
                    self.send_json(self.server.state(game), body=body)
                elif method == "POST" and action == ["move"]:
                    self.send_json(self.server.move(game, self._body()))
                elif method == "POST" and action == ["resign"]:
                    self._body()
                    self.send_json(self.server.resign(game))
                elif method in ("GET", "HEAD") and action in (["record.kif"], ["record.csa"]):
                    self._send_record(game, action[0], body)
                else:
                    raise WebError(HTTPStatus.NOT_FOUND, f"{path[:200]}: no such API")
            else:
                raise WebError(HTTPStatus.NOT_FOUND, f"{path[:200]}: not found")
        except WebError as exc:
            self.send_json({"error": str(exc)}, exc.status, body=method != "HEAD")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _send_record(self, game: PlayGame, name: str, body: bool) -> None:
        person, engine = "You", self.server.name
        names = (person, engine) if game.human is Color.BLACK else (engine, person)
        if name.endswith(".kif"):
            data = to_kif(game.game, names).encode("cp932", errors="replace")
            kind = "text/plain; charset=shift_jis"
        else:
            data = to_csa(game.game, names).encode()
            kind = "text/plain; charset=utf-8"
        self.send_data(data, kind, body=body,
                   extra={"Content-Disposition": f'attachment; filename="keisei-{game.id[:8]}.{name[7:]}"'})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-play", description="Play a Keisei network in the browser.",
        epilog="examples:\n  keisei-play runs/mine                 # its newest checkpoint\n"
               "  keisei-play runs/mine --movetime 3000   # three seconds a move\n"
               "  keisei-play model.pt --address 127.0.0.1:9000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="CHECKPOINT_OR_RUN_DIR",
                        help="a checkpoint, or a run directory (its newest checkpoint)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, metavar="[HOST:]PORT",
                        help=f"where to listen (default {DEFAULT_ADDRESS}; a host beyond "
                             "loopback lets anyone who reaches it play)")
    parser.add_argument("--movetime", type=int, default=1000, metavar="MS",
                        help="the engine's default time a move (the page may choose another)")
    parser.add_argument("--visits", type=int, metavar="N",
                        help="at most N visits a move (default: as many as fit in the time)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads")
    parser.add_argument("--max-plies", type=int, default=MAX_PLIES, metavar="N",
                        help=f"a game this long is a draw (at most {MAX_PLIES})")
    return add_version(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    problems = []
    if not 10 <= args.movetime <= MAX_MOVETIME_MS:
        problems.append(f"--movetime {args.movetime}: from 10 to {MAX_MOVETIME_MS} ms")
    if args.visits is not None and args.visits < 1:
        problems.append(f"--visits {args.visits}: at least 1")
    if not 1 <= args.max_plies <= MAX_PLIES:
        problems.append(f"--max-plies {args.max_plies}: from 1 to {MAX_PLIES}")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads {args.threads}: at least 1")
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        problems.append(f"--address: {exc}")
    if problems:
        print("keisei-play: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        checkpoint = resolve_checkpoint(args.target)
        if not checkpoint.is_file():
            raise CheckpointError(f"{checkpoint}: no such checkpoint or run directory")
        model, version = load_policy(checkpoint)
    except CheckpointError as exc:
        print(f"keisei-play: {exc}", file=sys.stderr)
        return 2
    try:
        server = PlayServer((host, port), model, f"Keisei {checkpoint.stem} (v{version})",
                            args.movetime, args.visits, "cpu", args.max_plies)
    except OSError as exc:
        print(f"keisei-play: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not is_loopback(host):
        logger.warning("keisei-play bound to %s: anyone who can reach it can play (and use "
                       "this machine's CPU)", host)
    print(f"keisei-play: {checkpoint} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
