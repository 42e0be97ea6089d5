"""Shogi engines as subprocess players: any USI engine, and GNU Shogi's own protocol.

Every read from an engine has a timeout (a reader thread feeds a queue), so an engine
that dies or stalls never hangs a match: the game it was thinking in is forfeited with
a logged reason, the process is killed, and a fresh one is started for the next game.
Moves are refereed by ``keisei.shogi.Game``: an answer that is not a legal move loses.

Sjaak II writes and expects drops as ``B@6e``; the USI client maps ``@``↔``*`` both
ways when the engine names itself Sjaak (or when asked to).
"""

from __future__ import annotations

import logging
import queue
import random
import re
import shlex
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keisei.errors import KeiseiError
from keisei.evaluation import Decision, Special
from keisei.processes import stop_process_tree, wait_for_exit
from keisei.shogi import STARTING_SFEN, Color, Game

logger = logging.getLogger(__name__)

GAMES_DIRECTORIES = ("/usr/games", "/usr/local/games")
"""Where Debian installs its Shogi engines (not on root's PATH)."""
START_TIMEOUT = 60.0
"""Seconds an engine may take to start (GPS Shogi loads 24 MB of tables)."""
MAX_RESTARTS = 5
"""An engine that dies more often than this in one match is not started again."""


class EngineError(KeiseiError):
    """An engine could not be started, died, stalled, or broke its protocol."""


def resolve_command(command: str) -> list[str]:
    """The argument list for ``command``; a bare program name is looked up on PATH and
    then in Debian's games directories.

    :raises EngineError: if the program cannot be found.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise EngineError(f"engine command {command!r} does not parse: {exc}") from exc
    if not argv:
        raise EngineError("empty engine command")
    program = argv[0]
    if "/" in program:
        if not Path(program).is_file():
            raise EngineError(f"engine program {program} does not exist")
        return argv
    found = shutil.which(program) or shutil.which(program, path=":".join(GAMES_DIRECTORIES))
    if found is None:
        raise EngineError(f"engine program {program!r} is not on PATH or in "
                          f"{', '.join(GAMES_DIRECTORIES)} (Debian: apt-get install PACKAGE)")
    return [found, *argv[1:]]


class EngineProcess:
    """A line-protocol engine subprocess whose reads all time out."""

    def __init__(self, argv: Sequence[str], name: str) -> None:
        self.name = name
        try:
            self.process = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1)
        except OSError as exc:
            raise EngineError(f"{name}: cannot start {list(argv)}: {exc}") from exc
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\r\n"))
        self.lines.put(None)  # end of output: the engine exited

    def send(self, *lines: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("".join(line + "\n" for line in lines))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise EngineError(f"{self.name} died ({self._exit_text()}) while being sent "
                              f"{lines[0]!r}") from exc

    def read_until(self, accept: Callable[[str], bool], timeout: float, waiting_for: str) -> str:
        """The first line ``accept`` takes, skipping others.

        :raises EngineError: if the engine exits first or ``timeout`` seconds pass.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise EngineError(f"{self.name} sent no {waiting_for} within {timeout:g} s") from None
            if line is None:
                self.lines.put(None)
                raise EngineError(f"{self.name} exited ({self._exit_text()}) before sending "
                                  f"{waiting_for}")
            if accept(line):
                return line

    def drain(self) -> None:
        """Drop lines already read (left over from an earlier answer)."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self.lines.put(None)
                return

    def _exit_text(self) -> str:
        try:
            code = self.process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return "still running, not answering"
        return f"exit code {code}"

    def close(self, quit_command: str = "quit") -> None:
        """Ask the engine to quit, then terminate and kill it if it does not."""
        try:
            self.send(quit_command)
        except EngineError:
            pass
        if not wait_for_exit(self.process, 1.0):
            stop_process_tree(self.process, grace_seconds=2.0)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


@dataclass
class SearchLimit:
    """How long an engine thinks per move; at least one is set (byoyomi otherwise)."""

    depth: int | None = None
    nodes: int | None = None
    byoyomi_ms: int | None = None

    def go_command(self) -> str:
        parts = ["go"]
        if self.byoyomi_ms is not None or (self.depth is None and self.nodes is None):
            parts += ["btime", "0", "wtime", "0", "byoyomi", str(self.byoyomi_ms or 100)]
        if self.depth is not None:
            parts += ["depth", str(self.depth)]
        if self.nodes is not None:
            parts += ["nodes", str(self.nodes)]
        return " ".join(parts)

    def describe(self) -> str:
        parts = []
        if self.depth is not None:
            parts.append(f"depth {self.depth}")
        if self.nodes is not None:
            parts.append(f"nodes {self.nodes}")
        if self.byoyomi_ms is not None or not parts:
            parts.append(f"byoyomi {self.byoyomi_ms or 100} ms")
        return ", ".join(parts)


class _RestartingEngine(ABC):
    """Starts its engine lazily and again after a death, up to ``MAX_RESTARTS`` times."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.engine: EngineProcess | None = None
        self.deaths = 0

    @abstractmethod
    def _start(self) -> EngineProcess:
        """A started, ready engine process."""

    @abstractmethod
    def _choose_one(self, engine: EngineProcess, game: Game) -> Decision:
        """The engine's decision in ``game``."""

    def start(self) -> None:
        """Start the engine now, so a bad command or option fails before any game.

        :raises EngineError: naming what is wrong.
        """
        self._running()

    def _running(self) -> EngineProcess:
        if self.engine is None:
            if self.deaths > MAX_RESTARTS:
                raise EngineError(f"{self.name} failed {self.deaths} times; not restarting it")
            self.engine = self._start()
        return self.engine

    def _failed(self, game: Game, exc: EngineError) -> Decision:
        """The engine died or stalled while thinking in ``game``: it forfeits that game."""
        self.deaths += 1
        logger.error("%s forfeits the game at ply %d (%s to move): %s", self.name, game.ply,
                     game.side_to_move, exc)
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        return Special.FORFEIT

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]:
        decisions: list[Decision] = []
        for game in games:
            try:
                decisions.append(self._choose_one(self._running(), game))
            except EngineError as exc:
                decisions.append(self._failed(game, exc))
        return decisions


@dataclass
class UsiSettings:
    """A USI engine and how it plays: options, per-move limit, how long to wait."""

    command: str
    options: dict[str, str] = field(default_factory=dict)
    limit: SearchLimit = field(default_factory=SearchLimit)
    move_timeout: float = 30.0
    """Seconds to wait for ``bestmove`` beyond the byoyomi."""
    at_drops: bool | None = None
    """Drops written ``B@6e`` (Sjaak II); None: decide from the engine's ``id name``."""
    name: str | None = None


class UsiPlayer(_RestartingEngine):
    """A USI engine as a ``Player``: ``position ... moves ...`` then ``go`` per move."""

    def __init__(self, settings: UsiSettings) -> None:
        super().__init__(settings.name or settings.command)
        self.settings = settings
        self.argv = resolve_command(settings.command)
        self.engine_name = ""
        self.at_drops = bool(settings.at_drops)

    def _start(self) -> EngineProcess:
        engine = EngineProcess(self.argv, self.name)
        try:
            engine.send("usi")
            offered: set[str] = set()

            def handshake(line: str) -> bool:
                words = line.split()
                if line.startswith("id name "):
                    self.engine_name = line[len("id name "):].strip()
                elif len(words) >= 3 and words[:2] == ["option", "name"]:
                    offered.add(" ".join(words[2:words.index("type")] if "type" in words else words[2:3]))
                return line.strip() == "usiok"

            engine.read_until(handshake, START_TIMEOUT, "usiok")
            unknown = sorted(set(self.settings.options) - offered)
            if unknown:
                raise EngineError(f"{self.name} has no option {unknown}; it offers {sorted(offered)}")
            if self.settings.at_drops is None:
                self.at_drops = "sjaak" in self.engine_name.lower()
            engine.send(*(f"setoption name {key} value {value}"
                          for key, value in self.settings.options.items()), "isready")
            engine.read_until(lambda line: line.strip() == "readyok", START_TIMEOUT, "readyok")
            engine.send("usinewgame")
        except EngineError:
            engine.close()
            raise
        return engine

    def _choose_one(self, engine: EngineProcess, game: Game) -> Decision:
        position = "position " + game.to_position()
        if self.at_drops:
            position = position.replace("*", "@")
        engine.drain()
        engine.send(position, self.settings.limit.go_command())
        timeout = self.settings.move_timeout + (self.settings.limit.byoyomi_ms or 0) / 1000
        line = engine.read_until(lambda text: text.startswith("bestmove"), timeout, "bestmove")
        words = line.split()
        answer = words[1] if len(words) > 1 else ""
        if answer == "resign":
            return Special.RESIGN
        move = game.board.move_from_usi(answer.replace("@", "*")) if 4 <= len(answer) <= 5 else 0
        if move == 0 or move not in game.legal_moves():
            logger.error("%s answered %r, not a legal move in %s: it forfeits", self.name, line,
                         game.sfen())
            return Special.FORFEIT
        return int(move)


_GNU_MOVE = re.compile(r"^\s*(?:depth = \d+\.\s*)?\d+\.\s*\.\.\.\s*(\S+)")


class GnuShogiPlayer(_RestartingEngine):
    """GNU Shogi (its xshogi line protocol) at a fixed search depth.

    Each move sets the game up afresh (``new``, ``depth``, ``force``, the moves so far,
    the colour to play, ``go``), so one process serves any number of games.
    """

    def __init__(self, depth: int, *, command: str = "gnushogi", move_timeout: float = 30.0,
                 name: str | None = None) -> None:
        super().__init__(name or f"gnushogi-d{depth}")
        self.depth = depth
        self.move_timeout = move_timeout
        self.argv = resolve_command(command) + ["-h"]  # -h: no hash file on disk

    def _start(self) -> EngineProcess:
        return EngineProcess(self.argv, self.name)

    def _choose_one(self, engine: EngineProcess, game: Game) -> Decision:
        if game.start_sfen != STARTING_SFEN:
            raise EngineError(f"{self.name} only plays games from the start position")
        moves = game.to_position().split()[2:]  # "startpos moves m1 m2 ..."
        colour = "black" if game.side_to_move is Color.BLACK else "white"
        engine.drain()
        engine.send("new", "depth", str(self.depth), "force", *moves, colour, "go")
        line = engine.read_until(lambda text: bool(_GNU_MOVE.match(text)) or "resign" in text.lower(),
                                 self.move_timeout, "a move")
        match = _GNU_MOVE.match(line)
        answer = match.group(1) if match else ""
        if "resign" in line.lower() or answer.lower().startswith("resign"):
            return Special.RESIGN
        move = game.board.move_from_usi(answer) if 4 <= len(answer) <= 5 else 0
        if move == 0 or move not in game.legal_moves():
            logger.error("%s answered %r, not a legal move in %s: it forfeits", self.name, line,
                         game.sfen())
            return Special.FORFEIT
        return int(move)
