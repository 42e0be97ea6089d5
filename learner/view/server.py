"""The web view of runs: ``keisei-learner --web [HOST:]PORT`` and ``keisei-web RUN_DIR…``.

A small read-only HTTP server (the standard library's, one thread per connection) that
serves a page and its assets (package data, ``learner/web_assets``: nothing is fetched
from the internet) and a JSON API over run directories:

* ``GET /api/runs``: the runs served, each with its summary (step, epoch, mode, steps/s,
  time to the end, the step ledger, the mode timeline, the actor table, the ratings);
* ``GET /api/runs/<i>/metrics?gen=G&from=K``: curve points from point ``K`` on;
* ``GET /api/runs/<i>/games``: the run's finished games (sample games, rating games);
* ``GET /api/runs/<i>/game?path=REL``: one of them, replayable (a position per ply);
* ``GET /api/fields``: the metric fields (name, label, unit, healthy band) and the charts
  drawn of them (``learner.fields``);
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

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from learner.fields import describe
from learner.view.address import is_loopback, parse_address
from learner.view.errors import WebError
from learner.view.games import LiveGame, live_view, read_game_file
from learner.view.http import JsonHandler, allowed_host_names
from learner.view.run_files import RunFiles

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
"""Connections served at once; one more is answered 503 and closed."""
MAX_STREAMS = 8
"""Event streams (open pages) at once; one more is answered 503."""
SEND_TIMEOUT = 10.0
"""Seconds a client may take to accept data before it is dropped."""
EVENT_INTERVAL = 1.0
"""Seconds between the event stream's checks for news."""
KEEPALIVE_SECONDS = 15.0
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
"""The only files served outside the API (from the package's ``web_assets``)."""


class _Handler(JsonHandler):
    server: WebServer
    send_timeout = SEND_TIMEOUT
    content_security_policy = "default-src 'self'; img-src 'self' data:"

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        self._serve(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def _refuse(self) -> None:
        self.send_json({"error": f"{self.command}: this server is read-only (GET only)"},
                       HTTPStatus.METHOD_NOT_ALLOWED, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

    def _serve(self, body: bool) -> None:
        try:
            self.check_host()
            split = urlsplit(self.path)
            query = parse_qs(split.query, keep_blank_values=True, max_num_fields=8)
            path = split.path
            if path in ASSETS:
                name, content_type = ASSETS[path]
                self.send_data(self.server.asset(name), content_type, body=body)
            elif path == "/favicon.ico":
                self.send_data(b"", "image/x-icon", HTTPStatus.NO_CONTENT, body=False)
            elif path == "/api/events":
                self.server.stream_events(self)
            elif path.startswith("/api/"):
                self.send_json(self.server.api(path, query), body=body)
            else:
                raise WebError(HTTPStatus.NOT_FOUND, f"{path[:200]}: not found")
        except WebError as exc:
            self.send_json({"error": str(exc)}, exc.status, body=body)
        except ValueError as exc:  # e.g. too many query fields
            self.send_json({"error": f"bad request: {exc}"}, HTTPStatus.BAD_REQUEST, body=body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True


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
        self.bound_host = address[0]
        self.allowed_hosts = allowed_host_names()
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
            self._assets[name] = resources.files("learner.view").joinpath("web_assets", name).read_bytes()
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
        if parts == ["fields"]:
            return describe()
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
            handler.send_safety_headers()
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
                           "the run (read-only, no authentication); see docs/guides/watching.md, "
                           "Security", host, self.server.server_address[1])
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
