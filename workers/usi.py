"""``keisei-usi``: a trained Keisei policy as a USI engine, for any Shogi GUI.

Usage: ``keisei-usi --checkpoint PATH [--device cpu|cuda]``. It speaks USI on
stdin/stdout: ``usi``, ``setoption``, ``isready``, ``usinewgame``, ``position``,
``go`` (any time controls are accepted; the answer is immediate), ``stop``,
``ponderhit``, ``gameover``, ``quit``. The move is the policy's most probable legal move
(or a sample, with the ``Temperature`` option); the value head's view is reported as
``score cp``. It answers ``bestmove resign`` when that value is below ``-ResignValue``
/ 100 (0 disables resigning) or no legal move exists, and ``bestmove win`` when an
entering-king declaration would win. Malformed commands get an ``info string`` reply and
are otherwise ignored.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import TextIO

import torch
from cshogi import move_to_usi

from keisei import __version__
from keisei.checkpoint import CheckpointError
from keisei.encoding import BatchEncoder
from keisei.errors import KeiseiError
from keisei.evaluation import load_policy
from keisei.model import PolicyValueNet, choose_actions, masked_logits, to_device
from keisei.shogi import Game

NO_PLY_LIMIT = 100_000


class UsiEngine:
    """The USI dialogue around one network; ``handle`` answers one line."""

    def __init__(self, model: PolicyValueNet, policy_version: int, output: TextIO,
                 device: torch.device) -> None:
        self.model = model.eval()
        self.device = device
        self.policy_version = policy_version
        self.output = output
        self.options = {"Temperature": 0, "ResignValue": 95, "Threads": 1}
        self.game = Game(max_plies=NO_PLY_LIMIT)
        self.encoder = BatchEncoder(1)
        self.generator = torch.Generator().manual_seed(0)

    def say(self, line: str) -> None:
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
                return False
            if command == "usi":
                self._usi()
            elif command == "isready":
                self.say("readyok")
            elif command == "setoption":
                self._setoption(arguments)
            elif command == "usinewgame":
                self.game = Game(max_plies=NO_PLY_LIMIT)
            elif command == "position":
                self.game = Game.from_position(" ".join(arguments), max_plies=NO_PLY_LIMIT)
            elif command == "go":
                self._go()
            elif command not in ("stop", "ponderhit", "gameover"):
                self.say(f"info string unknown command {command!r}")
        except (KeiseiError, ValueError) as exc:
            self.say(f"info string ignored {line.strip()!r}: {exc}")
        return True

    def _usi(self) -> None:
        self.say(f"id name Keisei {__version__} (policy v{self.policy_version})")
        self.say("id author Keisei")
        self.say("option name Temperature type spin default 0 min 0 max 300")
        self.say("option name ResignValue type spin default 95 min 0 max 100")
        self.say(f"option name Threads type spin default 1 min 1 max {torch.get_num_threads() * 4}")
        self.say("usiok")

    def _setoption(self, arguments: list[str]) -> None:
        if len(arguments) != 4 or arguments[0] != "name" or arguments[2] != "value":
            raise ValueError("expected: setoption name NAME value VALUE")
        name, value = arguments[1], arguments[3]
        if name not in self.options:
            raise ValueError(f"unknown option {name!r}")
        self.options[name] = int(value)
        if name == "Threads":
            torch.set_num_threads(max(1, self.options["Threads"]))

    def _go(self) -> None:
        board = self.game.board
        if self.game.outcome is not None or not self.game.legal_moves():
            self.say("bestmove resign")
            return
        if board.is_nyugyoku():
            self.say("bestmove win")
            return
        observations, masks = self.encoder.encode([self.game])
        with torch.inference_mode():
            logits, value = self.model(to_device(observations, self.device))
            masked = masked_logits(logits.float(), to_device(masks, self.device))
            temperature = self.options["Temperature"] / 100
            action, _ = choose_actions(masked, temperature, torch.rand(1, generator=self.generator))
        move = self.encoder.moves_for(action.cpu().numpy())[0]
        score = float(value[0])
        resign_below = -self.options["ResignValue"] / 100
        if self.options["ResignValue"] and score < resign_below:
            self.say("bestmove resign")
            return
        text = move_to_usi(int(move))  # legal: moves_for only maps actions in the legal mask
        centipawns = int(round(600 * math.atanh(max(min(score, 0.999), -0.999))))
        self.say(f"info depth 1 score cp {centipawns} pv {text}")
        self.say(f"bestmove {text}")


def load_engine(checkpoint: str, device: str, output: TextIO) -> UsiEngine:
    """A ``UsiEngine`` around a checkpoint's network.

    :raises CheckpointError: if the file is not a usable checkpoint.
    """
    model, policy_version = load_policy(checkpoint, device)
    return UsiEngine(model, policy_version, output, torch.device(device))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keisei-usi", description="A Keisei policy as a USI engine.")
    parser.add_argument("--checkpoint", required=True, help="a Keisei checkpoint (.pt)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        engine = load_engine(args.checkpoint, args.device, sys.stdout)
    except CheckpointError as exc:
        print(f"keisei-usi: {exc}", file=sys.stderr)
        return 2
    for line in sys.stdin:
        if not engine.handle(line):
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
