"""``keisei-usi``: a trained Keisei network as a USI engine, for any Shogi GUI.

Usage: ``keisei-usi --checkpoint PATH [--device cpu|cuda] [--config FILE.toml] [--set
search.KEY=VALUE ...]``. It speaks USI on stdin/stdout: ``usi``, ``setoption``,
``isready``, ``usinewgame``, ``position``, ``go``, ``stop``, ``ponderhit``, ``gameover``,
``quit``.

It **searches** (``keisei.search``, the ``[search]`` settings) unless the ``PolicyOnly``
option is set. The budget comes from ``go``: ``nodes N`` (visits), ``movetime MS``,
the clock (``btime``/``wtime`` with ``byoyomi`` or ``binc``/``winc``), or ``infinite``
until ``stop``; the ``Visits`` option caps the visits of every move (0: no cap; with no
time control at all, ``search.visits``). While it searches it reports ``info depth
seldepth nodes nps score cp|mate pv`` once a second and at the end, with ``MultiPV``
lines when asked. ``PolicyOnly`` plays the network's most probable legal move (or a
sample, with ``Temperature``) without tree search, as ``keisei.evaluation.policy_moves``
does (a forced mate first, no sennichite thrown away). It answers ``bestmove resign`` when the
value is below ``-ResignValue`` / 100 (0 disables resigning) or no legal move exists,
and ``bestmove win`` when an entering-king declaration would win. Malformed commands
get an ``info string`` reply and are otherwise ignored.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

import torch
from cshogi import move_to_usi

from keisei import __version__
from keisei.checkpoint import CheckpointError
from keisei.cli import add_version
from keisei.config import ConfigError, SearchConfig, load_search_config
from keisei.encoding import BatchEncoder
from keisei.errors import KeiseiError
from keisei.evaluation import load_policy, policy_moves
from keisei.model import PolicyValueNet, choose_actions, masked_logits, to_device
from keisei.search import UNBOUNDED, Search, SearchResult, network_evaluator
from keisei.shogi import Color, Game

NO_PLY_LIMIT = 100_000
SAFETY_MS = 100
"""Kept back from every time budget (the GUI's and the pipes' delays)."""
SPIN_OPTIONS = {  # name: (default, low, high)
    "Visits": (0, 0, 100_000_000),
    "MultiPV": (1, 1, 64),
    "Temperature": (0, 0, 300),
    "ResignValue": (95, 0, 100),
    "Threads": (1, 1, 256),
    "ByoyomiMargin": (SAFETY_MS, 0, 10_000),
}
CHECK_OPTIONS = {"PolicyOnly": False}


def centipawns(value: float) -> int:
    """A value in [-1, 1] (the side to move's) as the centipawns USI GUIs show."""
    return int(round(600 * math.atanh(max(min(value, 0.999), -0.999))))


def move_seconds(words: list[str], to_move: Color, margin_ms: int) -> float | None:
    """The seconds to spend on this move from a ``go`` command's time controls (None:
    no time control: a visit budget applies). ``byoyomi`` and increments are added to a
    share of the remaining time; ``margin_ms`` is kept back."""
    values: dict[str, int] = {}
    for name, value in zip(words, words[1:], strict=False):
        if name in ("btime", "wtime", "byoyomi", "binc", "winc", "movetime"):
            values[name] = int(value)
    if "movetime" in values:
        return max(values["movetime"] - margin_ms, 10) / 1000
    black = to_move is Color.BLACK
    left = values.get("btime" if black else "wtime")
    byoyomi = values.get("byoyomi", 0)
    increment = values.get("binc" if black else "winc", 0)
    if left is None and not byoyomi:
        return None
    left = left or 0
    share = left / (30 if increment else 40)
    budget = share + byoyomi + increment
    if byoyomi and left < 10 * byoyomi:
        budget = byoyomi + left / 60  # in byoyomi (nearly): spend the byoyomi, keep the rest
    budget = min(budget, left + byoyomi + increment)  # never more than the clock holds
    return max(budget - margin_ms, 10) / 1000


class UsiEngine:
    """The USI dialogue around one network; ``handle`` answers one line. ``go`` starts a
    search on a thread of its own, so ``stop`` and ``isready`` are answered meanwhile."""

    def __init__(self, model: PolicyValueNet, policy_version: int, output: TextIO,
                 device: torch.device, search: SearchConfig | None = None) -> None:
        self.model = model.eval()
        self.device = device
        self.policy_version = policy_version
        self.output = output
        self.search_config = search if search is not None else SearchConfig()
        self.options: dict[str, int | bool] = {name: default for name, (default, _, _)
                                               in SPIN_OPTIONS.items()}
        self.options.update(CHECK_OPTIONS)
        self.game = Game(max_plies=NO_PLY_LIMIT)
        self.encoder = BatchEncoder(1)
        self.generator = torch.Generator().manual_seed(0)
        self.searcher = Search(network_evaluator(model, device), self.search_config)
        self._lock = threading.Lock()  # one writer of the output at a time
        self._stop = threading.Event()
        self._thinking: threading.Thread | None = None

    def say(self, line: str) -> None:
        with self._lock:
            self.output.write(line + "\n")
            self.output.flush()

    def handle(self, line: str) -> bool:
        """Answer one command; False after ``quit``."""
        words = line.split()
        if not words:
            return True
        command, arguments = words[0], words[1:]
        try:
            if command == "quit":
                self.finish_thinking()
                return False
            if command in ("stop", "ponderhit"):
                self.finish_thinking()
            elif command == "isready":
                self.say("readyok")
            elif command == "usi":
                self._usi()
            elif command == "gameover":
                self.finish_thinking()
            elif command in ("setoption", "usinewgame", "position", "go"):
                self.finish_thinking()  # a GUI sends these after bestmove; a search ends first
                self._configure(command, arguments)
            else:
                self.say(f"info string unknown command {command!r}")
        except (KeiseiError, ValueError) as exc:
            self.say(f"info string ignored {line.strip()!r}: {exc}")
        return True

    def _configure(self, command: str, arguments: list[str]) -> None:
        """``setoption``, ``usinewgame``, ``position`` or ``go`` (no search running)."""
        if command == "setoption":
            self._setoption(arguments)
        elif command == "usinewgame":
            self.game = Game(max_plies=NO_PLY_LIMIT)
        elif command == "position":
            self.game = Game.from_position(" ".join(arguments), max_plies=NO_PLY_LIMIT)
        else:
            self._go(arguments)

    def finish_thinking(self) -> None:
        """Stop a running search; its ``bestmove`` is written before this returns."""
        thread = self._thinking
        if thread is not None:
            self._stop.set()
            thread.join()
            self._thinking = None

    def _usi(self) -> None:
        self.say(f"id name Keisei {__version__} (policy v{self.policy_version})")
        self.say("id author Keisei")
        for name, (default, low, high) in SPIN_OPTIONS.items():
            self.say(f"option name {name} type spin default {default} min {low} max {high}")
        for name, default in CHECK_OPTIONS.items():
            self.say(f"option name {name} type check default {str(default).lower()}")
        self.say("usiok")

    def _setoption(self, arguments: list[str]) -> None:
        if len(arguments) != 4 or arguments[0] != "name" or arguments[2] != "value":
            raise ValueError("expected: setoption name NAME value VALUE")
        name, value = arguments[1], arguments[3]
        if name in CHECK_OPTIONS:
            if value not in ("true", "false"):
                raise ValueError(f"option {name} takes true or false")
            self.options[name] = value == "true"
            return
        if name not in SPIN_OPTIONS:
            raise ValueError(f"unknown option {name!r}")
        _, low, high = SPIN_OPTIONS[name]
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"option {name} takes {low}..{high}")
        self.options[name] = number
        if name == "Threads":
            torch.set_num_threads(number)

    # --- go ------------------------------------------------------------------------------
    def _go(self, words: list[str]) -> None:
        game = self.game
        if game.outcome is not None or not game.legal_moves():
            self.say("bestmove resign")
            return
        if game.board.is_nyugyoku():
            self.say("bestmove win")
            return
        if self.options["PolicyOnly"]:
            self._policy_move()
            return
        visits, seconds = self._budget(words)
        self._stop.clear()
        self._thinking = threading.Thread(target=self._think, args=(visits, seconds),
                                          name="usi-search", daemon=True)
        self._thinking.start()

    def _budget(self, words: list[str]) -> tuple[int | None, float | None]:
        """(visits, seconds) for this move; (UNBOUNDED, None) for ``infinite`` and ``ponder``."""
        cap = int(self.options["Visits"]) or None
        if "infinite" in words or "ponder" in words:
            return (cap or UNBOUNDED), None
        if "nodes" in words:
            nodes = int(words[words.index("nodes") + 1])
            return (min(nodes, cap) if cap else nodes), None
        seconds = move_seconds(words, self.game.side_to_move, int(self.options["ByoyomiMargin"]))
        if seconds is None:
            return (cap or self.search_config.visits), None
        return cap, seconds

    def _think(self, visits: int | None, seconds: float | None) -> None:
        self.searcher.lines = int(self.options["MultiPV"])
        started = time.monotonic()
        try:
            result = self.searcher.search([self.game], visits, seconds, stop=self._stop,
                                          progress=lambda results, spent: self._info(results[0], spent))[0]
        except Exception as exc:  # never leave the GUI waiting for a bestmove
            self.say(f"info string search failed: {exc}")
            self.say(f"bestmove {move_to_usi(self.game.legal_moves()[0])}")
            return
        self._info(result, time.monotonic() - started)
        resign = int(self.options["ResignValue"])
        if resign and not result.mate and result.value < -resign / 100:
            self.say("bestmove resign")
            return
        self.say(f"bestmove {move_to_usi(result.move)}")

    def _info(self, result: SearchResult, seconds: float) -> None:
        nodes = result.nodes
        nps = int(nodes / seconds) if seconds > 0 else 0
        for number, (_, value, line) in enumerate(result.lines, start=1):
            if result.mate and number == 1:
                score = f"mate {result.mate_plies}" if result.mate_plies else "mate +"
            else:
                score = f"cp {centipawns(value)}"
            multipv = f" multipv {number}" if self.options["MultiPV"] > 1 else ""
            self.say(f"info depth {len(line)} seldepth {max(result.depth, len(line))}{multipv} "
                     f"nodes {nodes} nps {nps} time {int(seconds * 1000)} score {score} "
                     f"pv {' '.join(move_to_usi(move) for move in line)}")

    def _policy_move(self) -> None:
        observations, masks = self.encoder.encode([self.game])
        with torch.inference_mode():
            logits, value = self.model(to_device(observations, self.device))
            masked = masked_logits(logits.float(), to_device(masks, self.device))
            temperature = int(self.options["Temperature"]) / 100
            uniforms = torch.rand(1, generator=self.generator)
            action, _ = choose_actions(masked, temperature, uniforms)
            move = policy_moves([self.game], self.encoder, masked, value.float(), action,
                                temperature, uniforms,
                                mate_plies=self.search_config.root_mate_plies)[0]
        score = float(value[0])
        resign = int(self.options["ResignValue"])
        if resign and score < -resign / 100:
            self.say("bestmove resign")
            return
        text = move_to_usi(int(move))  # legal: moves_for only maps actions in the legal mask
        self.say(f"info depth 1 score cp {centipawns(score)} pv {text}")
        self.say(f"bestmove {text}")


def load_engine(checkpoint: str, device: str, output: TextIO,
                search: SearchConfig | None = None) -> UsiEngine:
    """A ``UsiEngine`` around a checkpoint's network.

    :raises CheckpointError: if the file is not a usable checkpoint.
    """
    model, policy_version = load_policy(checkpoint, device)
    return UsiEngine(model, policy_version, output, torch.device(device), search)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keisei-usi", description="A Keisei network as a USI engine.")
    add_version(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="a Keisei checkpoint (.pt), or a run directory (its newest)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--config", metavar="FILE.toml", help="a TOML file (its [search] is used)")
    parser.add_argument("--set", metavar="search.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one search setting (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        search = load_search_config(args.config, args.overrides)
        engine = load_engine(args.checkpoint, args.device, sys.stdout, search)
    except (CheckpointError, ConfigError) as exc:
        print(f"keisei-usi: {exc}", file=sys.stderr)
        return 2
    try:
        for line in sys.stdin:
            if not engine.handle(line):
                break
    finally:
        engine.finish_thinking()
    return 0


if __name__ == "__main__":
    sys.exit(main())
