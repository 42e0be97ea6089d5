"""The web view of runs: ``keisei-learner --web [HOST:]PORT`` and ``keisei-web RUN_DIR…``.

A small read-only HTTP server (the standard library's, one thread per connection) that
serves a page and its assets (package data, ``learner/web_assets``: nothing is fetched
from the internet) and a JSON API over run directories:

* ``GET /api/runs``: the runs served, each with its summary (step, epoch, mode, steps/s,
  time to the end, the step ledger, the mode timeline, the actor table, the ratings);
* ``GET /api/runs/<i>/metrics?gen=G&from=K``: curve points from point ``K`` on;
* ``GET /api/runs/<i>/games``: the run's finished games (sample games, rating games);
* ``GET /api/runs/<i>/game?path=REL``: one of them, replayable (a position per ply);
* ``GET /api/live``: the game being played now (in a learner) or the newest sample game;
* ``GET /api/events``: server-sent events, a summary each second while anything changed.

Everything comes from what the learner writes (``metrics.jsonl``, ``status.json``,
``ratings.json``, ``config.toml``, the games' CSA files), so ``keisei-web`` needs no
learner. Inside a learner, ``live`` hands the server the game being played: the training
loop only ever replaces a reference, and the server never makes it wait.

Bounded by construction: at most ``MAX_CONNECTIONS`` connections (more are answered
503), ``MAX_STREAMS`` event streams, ``MAX_RESPONSE_POINTS`` points per response, files
read only below a run directory (no ``..``, no absolute paths, no links out) and at most
``MAX_GAME_BYTES``, a send timeout that drops a stalled client, and no request body
accepted (no method but GET and HEAD).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import math
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cshogi

from keisei.cli import ExitCode, setup_logging
from keisei.elo import elo_interval
from keisei.errors import KeiseiError
from keisei.kifu import read_csa
from keisei.rundir import RunDir
from keisei.shogi import Game

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
MAX_CONNECTIONS = 32
"""Connections served at once; one more is answered 503 and closed."""
MAX_STREAMS = 8
"""Event streams (open pages) at once; one more is answered 503."""
MAX_RESPONSE_POINTS = 5000
"""Curve points in one response; the page asks again from where it stopped."""
MAX_KEPT_POINTS = 20000
"""Curve points kept per run; beyond, every other old point is dropped (the curve thins)."""
MAX_KEPT_CHANGES = 1000
"""Mode changes kept per run (the newest)."""
MAX_GAMES_LISTED = 500
"""Finished games listed per run (the newest)."""
MAX_GAME_BYTES = 1 << 20
"""The largest game file the server reads."""
MAX_METRICS_READ = 16 << 20
"""Bytes of ``metrics.jsonl`` read per refresh (a huge file is read over several)."""
SEND_TIMEOUT = 10.0
"""Seconds a client may take to accept data before it is dropped."""
EVENT_INTERVAL = 1.0
"""Seconds between the event stream's checks for news."""
KEEPALIVE_SECONDS = 15.0
REFRESH_SECONDS = 0.5
"""A run's files are read again at most this often, whatever the number of clients."""
GAMES_REFRESH_SECONDS = 5.0

CURVE_FIELDS = ("step", "time", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
                "explained_variance", "steps_per_second", "actor_steps_per_second",
                "mean_game_length", "black_win_rate", "white_win_rate", "draw_rate", "elo",
                "search_loss", "learning_rate", "grad_norm")
"""The numbers of each ``metrics.jsonl`` line the curves show, in the order of a point."""

ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
"""The only files served outside the API (from the package's ``web_assets``)."""


class WebError(KeiseiError, ValueError):
    """A bad request: its status and a message that names the problem."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``HOST`` defaults to 127.0.0.1; ``[::1]:PORT`` for IPv6).

    :raises ValueError: naming what is wrong.
    """
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"web address {text!r}: the port must be a number ([HOST:]PORT)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"web address {text!r}: port {port} is not in 0..65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- games -----------------------------------------------------------------------------------
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
    and each move in USI."""
    board = cshogi.Board(start_sfen)
    sfens, usis = [board.sfen()], []
    for move in moves:
        usis.append(cshogi.move_to_usi(move))
        board.push(move)
        sfens.append(board.sfen())
    return {"start_sfen": start_sfen, "moves": usis, "sfens": sfens, "result": result}


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
    view = game_view(game.start_sfen, game.moves, _result(game))
    view.update(black=names[0], white=names[1])
    return view


def _result(game: Game) -> str:
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


# --- a run directory -------------------------------------------------------------------------
class RunFiles:
    """What the page shows of one run, read from its directory alone. ``refresh`` reads
    the files again (at most every ``REFRESH_SECONDS``, whoever asks); every reader gets
    plain JSON-ready values under one lock."""

    def __init__(self, index: int, path: Path) -> None:
        self.index = index
        self.path = path
        self.run = RunDir(path)
        self.name = path.name or str(path)
        self._lock = threading.Lock()
        self._refreshed = -math.inf
        self._offset = 0  # bytes of metrics.jsonl taken in
        self._partial = b""  # a line being written
        self.points: list[list[float | None]] = []
        self.generation = 0  # changes when points are thinned or metrics.jsonl starts over
        self.last: dict[str, Any] = {}
        self.first_time: float | None = None
        self.modes: list[list[Any]] = []  # [step, time, mode] where the mode changed
        self.transitions: dict[float, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.ratings: dict[str, Any] | None = None
        self.total_steps: int | None = None
        self._mtimes: dict[str, float] = {}
        self._games: list[dict[str, Any]] = []
        self._games_listed = -math.inf
        self.version = 0  # changes whenever anything shown changed
        self._newest: LiveGame | None = None  # the newest sample game, once read

    # --- reading ----------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._refreshed < REFRESH_SECONDS:
                return
            self._refreshed = now
            changed = self._read_metrics()
            self.status, status_changed = self._read_json(self.run.status, self.status)
            self.ratings, ratings_changed = self._read_json(self.run.ratings, self.ratings)
            if self.total_steps is None or self._changed(self.run.config):
                self.total_steps = self._read_total_steps()
            if changed or status_changed or ratings_changed:
                self.version += 1

    def _changed(self, path: Path) -> bool:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return False
        if self._mtimes.get(path.name) == mtime:
            return False
        self._mtimes[path.name] = mtime
        return True

    def _read_json(self, path: Path, current: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
        if not self._changed(path):
            return current, False
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced, or not there yet
            return current, False
        return (value if isinstance(value, dict) else current), True

    def _read_total_steps(self) -> int | None:
        try:
            config = tomllib.loads(self.run.config.read_text(encoding="utf-8"))
            return int(config["train"]["total_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _read_metrics(self) -> bool:
        path = self.run.metrics
        try:
            size = path.stat().st_size
        except OSError:
            return False
        if size < self._offset:  # rewritten (a resume cut it back): start over
            self._offset, self._partial = 0, b""
            self.points, self.modes, self.transitions, self.last = [], [], {}, {}
            self.first_time = None
            self.generation += 1
        if size == self._offset:
            return False
        with path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read(min(size - self._offset, MAX_METRICS_READ))
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                self._take(record)
        if len(self.points) > MAX_KEPT_POINTS:
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]
            self.generation += 1
        return True

    def _take(self, record: dict[str, Any]) -> None:
        seconds = record.get("time")
        if isinstance(seconds, int | float) and self.first_time is None:
            self.first_time = float(seconds)
        point = [_number(record.get(name)) for name in CURVE_FIELDS]
        point[1] = (None if point[1] is None or self.first_time is None
                    else round(point[1] - self.first_time, 3))  # wall-clock since the first epoch
        self.points.append(point)
        mode = record.get("mode")
        if mode is not None and (not self.modes or self.modes[-1][2] != mode):
            self.modes.append([record["step"], point[1], mode])
        for item in record.get("transitions") or []:
            if isinstance(item, dict) and isinstance(item.get("time"), int | float):
                self.transitions[float(item["time"])] = {
                    "time": item["time"], "mode": str(item.get("mode")),
                    "cause": str(item.get("cause"))[:200]}
        if len(self.transitions) > MAX_KEPT_CHANGES:  # a run that changed mode very often
            for key in sorted(self.transitions)[:-MAX_KEPT_CHANGES]:
                del self.transitions[key]
        if len(self.modes) > MAX_KEPT_CHANGES:
            self.modes = self.modes[-MAX_KEPT_CHANGES:]
        self.last = {key: value for key, value in record.items() if key != "actors"}
        self.last["actors"] = record.get("actors") or []

    # --- what is served ---------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            last = self.last
            step = last.get("step")
            rate = _number(last.get("steps_per_second"))
            eta = None
            if self.total_steps is not None and step is not None and rate:
                eta = max(0.0, (self.total_steps - step) / rate)
            try:
                age = time.time() - self.run.metrics.stat().st_mtime
            except OSError:
                age = None
            status = self.status or {}
            fresh_status = bool(status) and time.time() - float(status.get("time", 0)) < 30
            actors = status.get("actors") if fresh_status else last.get("actors")
            return {
                "id": self.index, "name": self.name, "path": str(self.path), "version": self.version,
                "generation": self.generation, "points": len(self.points),
                "step": step, "epoch": last.get("epoch"), "total_steps": self.total_steps,
                "policy_version": last.get("policy_version"),
                "mode": status.get("mode") if fresh_status else last.get("mode"),
                "steps_per_second": rate, "actor_steps_per_second": _number(
                    last.get("actor_steps_per_second")),
                "eta_seconds": eta, "time": last.get("time"),
                "seconds_since_epoch": None if age is None else round(age, 1),
                "status_time": status.get("time") if status else None,
                "ledger": status.get("ledger") if fresh_status and status.get("ledger")
                else last.get("ledger"),
                "games": last.get("games"), "mean_game_length": last.get("mean_game_length"),
                "actors": (actors or [])[:64], "actor_states": last.get("actor_states"),
                "modes": self.modes[-200:],
                "transitions": sorted(self.transitions.values(), key=lambda t: t["time"])[-50:],
                "first_time": self.first_time,
                "ratings": _ratings_rows(self.ratings),
                "ladder": (self.ratings or {}).get("latest", {}).get("scores"),
            }

    def metrics(self, generation: int | None, start: int) -> dict[str, Any]:
        self.refresh()
        with self._lock:
            if generation != self.generation:
                start = 0
            points = self.points[start:start + MAX_RESPONSE_POINTS]
            return {"fields": CURVE_FIELDS, "generation": self.generation, "from": start,
                    "points": points, "total": len(self.points)}

    def games(self) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            if now - self._games_listed >= GAMES_REFRESH_SECONDS:
                self._games_listed = now
                self._games = self._list_games()
            return list(self._games)

    def _list_games(self) -> list[dict[str, Any]]:
        found = []
        for files, kind, folder in ((self.run.sample_games(), "sample", self.run.games),
                                    (self.run.rating_games(), "rating", self.run.rating_jobs / "jobs")):
            for file in files:
                try:
                    mtime = file.stat().st_mtime
                except OSError:
                    continue
                found.append({"path": file.relative_to(self.path).as_posix(), "kind": kind,
                              "mtime": mtime, "name": file.relative_to(folder).as_posix()})
        found.sort(key=lambda item: (item["mtime"], item["path"]), reverse=True)
        return found[:MAX_GAMES_LISTED]

    def resolve(self, relative: str) -> Path:
        """The file ``relative`` names inside the run directory.

        :raises WebError: for anything but a plain relative path to a ``.csa`` file that
            lies below the run directory.
        """
        if not relative or len(relative) > 512 or "\x00" in relative or "\\" in relative:
            raise WebError(HTTPStatus.BAD_REQUEST, "path: a relative path to a .csa game is needed")
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or pure.suffix != ".csa":
            raise WebError(HTTPStatus.FORBIDDEN, f"path {relative!r}: only .csa games inside the "
                           "run directory are served")
        root = self.path.resolve()
        target = (root / pure).resolve()
        if not target.is_relative_to(root):  # a link that leads out
            raise WebError(HTTPStatus.FORBIDDEN, f"path {relative!r}: leads outside the run directory")
        if not target.is_file():
            raise WebError(HTTPStatus.NOT_FOUND, f"path {relative!r}: no such game")
        return target

    def newest_game(self) -> LiveGame | None:
        """The newest sample game (what ``keisei-web`` shows on the live board)."""
        samples = [item for item in self.games() if item["kind"] == "sample"]
        if not samples:
            return None
        newest = samples[0]
        key = f"{self.index}:{newest['path']}:{newest['mtime']}"
        if self._newest is not None and self._newest.key == key:
            return self._newest  # read once, not once a second for every page
        try:
            game = read_csa((self.path / newest["path"]).read_text(encoding="utf-8", errors="replace"))
        except (OSError, KeiseiError):
            return None
        self._newest = LiveGame(key, f"{self.name}: {newest['name']}", game.start_sfen,
                                tuple(game.moves), result=_result(game))
        return self._newest


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _ratings_rows(ratings: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each rated policy and baseline with its Elo and a 95% interval from its own games."""
    if not ratings:
        return []
    table = ratings.get("table") or {}
    steps = {str(item[0]): item[1] for item in ratings.get("rated") or [] if len(item) == 2}
    results: dict[str, list[int]] = {}
    for pairing in ratings.get("pairings") or []:
        try:
            first, second = str(pairing["first"]), str(pairing["second"])
            wins, draws, losses = (int(pairing[key]) for key in ("wins", "draws", "losses"))
        except (KeyError, TypeError, ValueError):
            continue
        for name, won, lost in ((first, wins, losses), (second, losses, wins)):
            tally = results.setdefault(name, [0, 0, 0])
            tally[0] += won
            tally[1] += draws
            tally[2] += lost
    rows = []
    for name, elo in table.items():
        row: dict[str, Any] = {"name": name, "elo": _number(elo), "step": steps.get(name)}
        wins, draws, losses = results.get(name, [0, 0, 0])
        if wins + draws + losses:
            low, high = elo_interval(wins, draws, losses)
            half = (high - low) / 2
            row.update(games=wins + draws + losses, interval=_number(half))
        rows.append(row)
    return rows


# --- the server ------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"
    server_version = "Keisei"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(SEND_TIMEOUT)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _refuse(self) -> None:
        self._send_json({"error": f"{self.command}: this server is read-only (GET only)"},
                        HTTPStatus.METHOD_NOT_ALLOWED, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _serve(self, body: bool) -> None:
        try:
            split = urlsplit(self.path)
            query = parse_qs(split.query, keep_blank_values=True, max_num_fields=8)
            path = split.path
            if path in ASSETS:
                name, content_type = ASSETS[path]
                self._send(self.server.asset(name), content_type, body=body)
            elif path == "/favicon.ico":
                self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT, body=False)
            elif path == "/api/events":
                self.server.stream_events(self)
            elif path.startswith("/api/"):
                self._send_json(self.server.api(path, query), body=body)
            else:
                raise WebError(HTTPStatus.NOT_FOUND, f"{path[:200]}: not found")
        except WebError as exc:
            self._send_json({"error": str(exc)}, exc.status, body=body)
        except ValueError as exc:  # e.g. too many query fields
            self._send_json({"error": f"bad request: {exc}"}, HTTPStatus.BAD_REQUEST, body=body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _send_json(self, value: Any, status: HTTPStatus = HTTPStatus.OK, body: bool = True,
                   extra: dict[str, str] | None = None) -> None:
        data = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        self._send(data, "application/json", status, body, extra)

    def _send(self, data: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK,
              body: bool = True, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self._common_headers()
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        self.send_header("Referrer-Policy", "no-referrer")


class WebServer(ThreadingHTTPServer):
    """The web view's server (see the module docstring). ``live`` returns the game the
    live board shows, or None; it is called from the server's threads, so it must only
    read references the training loop replaces."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], run_dirs: Sequence[Path],
                 live: Callable[[], LiveGame | None] | None = None) -> None:
        self.runs = [RunFiles(index, Path(path)) for index, path in enumerate(run_dirs)]
        self.live = live
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self._assets: dict[str, bytes] = {}
        self._live_cache: tuple[tuple[str, int, str | None], dict[str, Any]] | None = None
        self._live_lock = threading.Lock()
        self.closing = threading.Event()
        self.refused = 0  # connections answered 503
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    # --- connections: bounded ----------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.refused += 1
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 5\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    # --- content ----------------------------------------------------------------------------
    def asset(self, name: str) -> bytes:
        if name not in self._assets:
            self._assets[name] = resources.files("learner").joinpath("web_assets", name).read_bytes()
        return self._assets[name]

    def run(self, text: str) -> RunFiles:
        try:
            index = int(text)
        except ValueError:
            raise WebError(HTTPStatus.BAD_REQUEST, f"run {text[:40]!r}: not a run number") from None
        if not 0 <= index < len(self.runs):
            raise WebError(HTTPStatus.NOT_FOUND, f"run {index}: there are {len(self.runs)} runs")
        return self.runs[index]

    def api(self, path: str, query: dict[str, list[str]]) -> Any:
        parts = path.strip("/").split("/")[1:]
        if parts == ["runs"]:
            return {"runs": [run.summary() for run in self.runs], "live": self.live is not None}
        if parts == ["live"]:
            return self.live_game()
        if len(parts) == 3 and parts[0] == "runs":
            run = self.run(parts[1])
            if parts[2] == "metrics":
                generation = _int_query(query, "gen", None)
                return run.metrics(generation, _int_query(query, "from", 0) or 0)
            if parts[2] == "games":
                return {"games": run.games()}
            if parts[2] == "game":
                relative = _str_query(query, "path")
                return {"path": relative, **read_game_file(run.resolve(relative))}
        raise WebError(HTTPStatus.NOT_FOUND, f"{path[:200]}: no such API")

    def live_game(self) -> dict[str, Any] | None:
        """The live board's game, as the page shows it (computed once per change)."""
        game = self.live() if self.live is not None else None
        if game is None:
            game = next((found for run in self.runs if (found := run.newest_game()) is not None), None)
        if game is None:
            return None
        key = (game.key, len(game.moves), game.result)
        with self._live_lock:
            if self._live_cache is not None and self._live_cache[0] == key:
                return self._live_cache[1]
        view = live_view(game)
        with self._live_lock:
            self._live_cache = (key, view)
        return view

    def stream_events(self, handler: _Handler) -> None:
        """Server-sent events: a ``runs`` event when a run changed and a ``live`` event
        when the live game did, checked each ``EVENT_INTERVAL``; a comment now and then
        keeps proxies from closing the stream."""
        if not self._streams.acquire(blocking=False):
            raise WebError(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_STREAMS} pages are open already")
        try:
            handler.send_response(HTTPStatus.OK)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Connection", "close")
            handler._common_headers()
            handler.end_headers()
            handler.close_connection = True
            sent_runs: list[int] | None = None
            sent_live: Any = None
            quiet_since = time.monotonic()
            while not self.closing.is_set():
                for run in self.runs:
                    run.refresh()
                versions = [run.version for run in self.runs]
                messages: list[tuple[str, Any]] = []
                if versions != sent_runs:
                    messages.append(("runs", {"runs": [run.summary() for run in self.runs]}))
                    sent_runs = versions
                live = self.live_game()
                live_key = None if live is None else (live["key"], len(live["moves"]), live["result"])
                if live_key != sent_live:
                    messages.append(("live", live))
                    sent_live = live_key
                if messages:
                    data = b"".join(f"event: {name}\ndata: {json.dumps(value, allow_nan=False)}\n\n"
                                    .encode() for name, value in messages)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                    data, quiet_since = b": keepalive\n\n", time.monotonic()
                else:
                    data = b""
                if data:
                    handler.wfile.write(data)
                    handler.wfile.flush()
                self.closing.wait(EVENT_INTERVAL)
        finally:
            self._streams.release()

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()


def _int_query(query: dict[str, list[str]], name: str, default: int | None) -> int | None:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise WebError(HTTPStatus.BAD_REQUEST, f"{name}={values[0][:40]!r}: not a whole number") from None
    if value < 0:
        raise WebError(HTTPStatus.BAD_REQUEST, f"{name}={value}: must be 0 or more")
    return value


def _str_query(query: dict[str, list[str]], name: str) -> str:
    values = query.get(name)
    if not values:
        raise WebError(HTTPStatus.BAD_REQUEST, f"the {name} parameter is missing")
    return values[0]


class WebView:
    """The web server on its own thread: ``with WebView(address, run_dirs, live) as web``
    serves until the block ends (``web.url``). Binding beyond loopback is logged."""

    def __init__(self, address: str, run_dirs: Sequence[Path],
                 live: Callable[[], LiveGame | None] | None = None) -> None:
        host, port = parse_address(address)
        try:
            self.server = WebServer((host, port), run_dirs, live)
        except OSError as exc:
            raise OSError(f"web view: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.url = self.server.url
        if not is_loopback(host):
            logger.warning("web view bound to %s:%d: anyone who can reach this address can read "
                           "the run (read-only, no authentication); see the README's security "
                           "note", host, self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="keisei-web", daemon=True)
        self._thread.start()
        logger.info("web view at %s", self.url)

    def __enter__(self) -> WebView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# --- keisei-web --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-web",
        description="Serve the web view of runs from their directories alone (finished or "
                    "running; no learner needed).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to show")
    parser.add_argument("--address", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}", metavar="[HOST:]PORT",
                        help=f"where to listen (default {DEFAULT_HOST}:{DEFAULT_PORT}; a host "
                             "beyond loopback exposes the runs, read-only, to the network)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    for run_dir in args.run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            problems.append(f"{run_dir}: not a directory")
        elif not RunDir(path).holds_run():
            problems.append(f"{run_dir}: holds no run (no metrics.jsonl or checkpoint)")
    try:
        parse_address(args.address)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"keisei-web: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    setup_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with WebView(args.address, [Path(path) for path in args.run_dirs]) as web:
            print(f"keisei-web: serving {len(args.run_dirs)} run(s) at {web.url} (Ctrl-C stops)",
                  flush=True)
            while not stop.wait(0.5):
                pass
    except OSError as exc:
        print(f"keisei-web: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())

