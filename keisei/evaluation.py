"""Matches between players, Elo estimates, and the opening set matches start from.

A *player* answers, for a batch of games it is to move in, one decision per game: a
move, a resignation or a forfeit. ``play_match`` runs many games in lock-step, so a
network evaluates all its positions in one batch per ply, and plays every opening twice
with the colours swapped: fixed-depth engines and a greedy network are deterministic,
and the openings are what makes their games differ.

Players here need no process of their own: ``RandomPlayer``, ``GreedyPlayer`` (a
material player) and ``PolicyPlayer`` (a network). Engines that run as subprocesses
(USI engines, GNU Shogi) live in ``workers.engines`` and follow the same protocol.

Elo: ``MatchResult.elo`` is the difference implied by one match's score, with its 95%
interval; the maths, and the fit of one rating per player to many matches, are in
``keisei.elo``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Protocol

import cshogi
import torch
from torch import nn

from keisei.checkpoint import CheckpointError, load_checkpoint
from keisei.config import SearchConfig, build_config
from keisei.elo import Z_95, elo_estimate, elo_interval, format_elo
from keisei.encoding import PIECE_VALUES, BatchEncoder
from keisei.errors import IllegalMoveError, KeiseiError
from keisei.model import PolicyValueNet, autocast, build_model, choose_actions, masked_logits
from keisei.search import Search, network_evaluator
from keisei.shogi import Color, Game, Termination, mating_move


class Special(StrEnum):
    """Decisions other than a move."""

    RESIGN = "resign"
    FORFEIT = "forfeit"
    """The player cannot answer (its engine died, stalled or sent garbage): it loses."""


Decision = int | Special
"""A cshogi move, or a ``Special``."""


class Player(Protocol):
    """Anything that picks moves. ``choose`` gets every game this player is to move in
    (none of them over) and a random generator per game (the same game always gets the
    same generator, so play is reproducible however games are batched)."""

    name: str

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]: ...

    def close(self) -> None: ...


class RandomPlayer:
    """Uniform over the legal moves."""

    def __init__(self, name: str = "random") -> None:
        self.name = name

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]:
        return [rng.choice(game.legal_moves()) for game, rng in zip(games, rngs, strict=True)]

    def close(self) -> None:
        pass


class GreedyPlayer:
    """Captures the most valuable piece it can (ties broken at random), preferring to
    promote while doing so; with no capture, a random move."""

    def __init__(self, name: str = "greedy") -> None:
        self.name = name

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]:
        return [self._choose_one(game, rng) for game, rng in zip(games, rngs, strict=True)]

    @staticmethod
    def _choose_one(game: Game, rng: random.Random) -> Decision:
        legal = game.legal_moves()
        best_value, best = 0.0, []
        for move in legal:
            captured = cshogi.move_cap(move)
            if not captured:
                continue
            value = PIECE_VALUES[captured] + (0.5 if cshogi.move_is_promotion(move) else 0.0)
            if value > best_value:
                best_value, best = value, [move]
            elif value == best_value:
                best.append(move)
        return rng.choice(best or legal)

    def close(self) -> None:
        pass


def throws_away(game: Game, move: int, value: float) -> bool:
    """Whether ``move`` heads ``game`` for sennichite that the mover should not want: it
    gives perpetual check (a loss), or, while its ``value`` (its own view, -1..1) says it
    is ahead, it goes back to a position of this game (as chess engines score a first
    repetition a draw: waiting for the fourth lets the opponent's move complete it, or
    end a perpetual check against the mover)."""
    mover = game.side_to_move
    game.push(move)
    outcome, repeated = game.outcome, game.repetitions > 0
    game.pop()
    if outcome is not None and outcome.reason == Termination.PERPETUAL_CHECK:
        return outcome.winner != mover
    return value > 0 and repeated


ROOT_MATE_PLIES = SearchConfig().root_mate_plies
"""A policy player's mate search, the same as a search's at its root (5 plies)."""


def policy_moves(games: Sequence[Game], encoder: BatchEncoder, masked: torch.Tensor,
                 values: torch.Tensor, actions: torch.Tensor, temperature: float,
                 uniforms: torch.Tensor | None, *, mate_plies: int = ROOT_MATE_PLIES,
                 avoid_sennichite: bool = True) -> list[int]:
    """The move each game's policy player makes, from the ``actions`` that
    ``choose_actions`` chose from ``masked`` (after ``encoder.encode(games)``).

    - A forced mate of at most ``mate_plies`` plies (``keisei.shogi.mating_move``, 1 to
      6 µs) is played first, as self-play (``selfplay.mate_search``) and the search at its
      root (``search.root_mate_plies``) do: self-play's mate search plays most of the
      mates its policy would otherwise have had to find, so the policy alone is slow to
      finish won games (``docs/results/2026-12-05-policy-player.md``). 0: none.
    - With ``avoid_sennichite``, a move that ``throws_away`` its game is replaced by
      the policy's next choice among the moves left (the next most probable, or a sample
      from the rest at ``temperature`` with the same uniform); if every legal move
      throws the game away, the first choice stands. A raw policy sees how often the
      current position occurred, not what its move will repeat, so without this a
      winning policy drifts into sennichite.
    """
    moves = [int(move) for move in encoder.moves_for(actions.cpu().numpy())]
    for row, game in enumerate(games):
        mate = mating_move(game, mate_plies)
        if mate is not None:
            moves[row] = mate
            continue
        value = float(values[row])
        if not avoid_sennichite or not throws_away(game, moves[row], value):
            continue
        logits = masked[row:row + 1].clone()
        action = int(actions[row])
        while True:
            logits[0, action] = float("-inf")
            if not bool(torch.isfinite(logits).any()):
                break  # every move throws the game away: keep the first choice
            uniform = uniforms[row:row + 1] if uniforms is not None else None
            action = int(choose_actions(logits, temperature, uniform)[0][0])
            candidate = encoder.move_at(row, action)
            if not throws_away(game, candidate, value):
                moves[row] = candidate
                break
    return moves


class PolicyPlayer:
    """A network's policy: its most probable legal move, or a sample at ``temperature``,
    with the mate search and the sennichite check of ``policy_moves`` (``mate_plies``
    0 and ``avoid_sennichite`` False: the network alone).

    All positions of one ``choose`` go through the network in one batch.
    """

    def __init__(self, model: nn.Module, name: str, *, temperature: float = 0.0,
                 device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None,
                 mate_plies: int = ROOT_MATE_PLIES, avoid_sennichite: bool = True) -> None:
        self.model = model.eval()
        self.name = name
        self.temperature = temperature
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.mate_plies = mate_plies
        self.avoid_sennichite = avoid_sennichite
        self.encoder = BatchEncoder(1)

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]:
        if len(games) > self.encoder.capacity:
            self.encoder = BatchEncoder(len(games))
        observations, masks = self.encoder.encode(list(games))
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            logits, values = self.model(torch.from_numpy(observations).to(self.device))
            masked = masked_logits(logits.float(), torch.from_numpy(masks).to(self.device))
            uniforms = torch.tensor([rng.random() for rng in rngs]) if self.temperature else None
            actions, _ = choose_actions(masked, self.temperature, uniforms)
            moves = policy_moves(games, self.encoder, masked, values.float(), actions,
                                 self.temperature, uniforms, mate_plies=self.mate_plies,
                                 avoid_sennichite=self.avoid_sennichite)
        return list(moves)

    def close(self) -> None:
        pass


class SearchPlayer:
    """A network with tree search (``keisei.search``), without noise: ``visits`` per
    move, or ``movetime`` seconds per move (``visits`` then caps it).

    With a visit budget the positions of all the games it is to move in are searched
    together (one network call per pass for all of them). With a movetime each game's
    move has that time to itself, as in a game against a GUI: the games are searched
    one after another, each batching its own leaves under virtual loss. (Searched
    together, the games would share the time, each getting a fraction of the visits.)"""

    def __init__(self, model: nn.Module, name: str, *, visits: int | None = None,
                 movetime: float | None = None, config: SearchConfig | None = None,
                 device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None) -> None:
        if visits is None and movetime is None:
            raise ValueError("a SearchPlayer needs visits or a movetime")
        self.name = name
        self.visits = visits
        self.movetime = movetime
        self.search = Search(network_evaluator(model, device, autocast_dtype), config)

    def choose(self, games: Sequence[Game], rngs: Sequence[random.Random]) -> list[Decision]:
        if self.movetime is None:
            results = self.search.search(list(games), self.visits)
        else:
            results = [self.search.search([game], self.visits, self.movetime)[0] for game in games]
        return [result.move for result in results]

    def close(self) -> None:
        self.search.cache.clear()


def search_budget_name(visits: int | None, movetime_ms: int | None) -> str:
    """How a search budget is written in names and tables: ``256 visits``, ``500 ms``."""
    if movetime_ms is not None:
        return f"{movetime_ms} ms" + (f", at most {visits} visits" if visits else "")
    return f"{visits} visits" if visits else "policy"


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> tuple[PolicyValueNet, int]:
    """The network saved in a checkpoint (or a ``save_policy`` file), in eval mode, and
    its policy version.

    :raises CheckpointError: if the file is not a usable checkpoint.
    """
    state = load_checkpoint(path, map_location=device)
    try:
        config = build_config([{"model": state["config"]["model"]}])
        model = build_model(config.model).to(device)
        model.load_state_dict(state["model"])
        version = int(state["counters"]["policy_version"])
    except (KeiseiError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its network cannot be loaded: {exc}") from exc
    return model.eval(), version


# --- openings ------------------------------------------------------------------------------
def load_openings(text: str | None = None) -> list[tuple[str, ...]]:
    """Opening lines: one per text line, USI moves from the start position (``#`` comments
    and blank lines skipped). Without ``text``, the set shipped with Keisei
    (``keisei/openings.txt``), each a short, roughly balanced line of real play.

    :raises IllegalMoveError: if a line holds an illegal move (naming the line).
    """
    if text is None:
        text = resources.files("keisei").joinpath("openings.txt").read_text(encoding="utf-8")
    openings = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        moves = tuple(line.split())
        game = Game()
        for move in moves:
            try:
                game.push_usi(move)
            except IllegalMoveError as exc:
                raise IllegalMoveError(f"opening line {number}: {exc}") from exc
        openings.append(moves)
    if not openings:
        raise IllegalMoveError("the opening set is empty")
    return openings


# --- matches -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchResult:
    """Wins, draws and losses from the first player's view."""

    wins: int
    draws: int
    losses: int

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def score(self) -> float:
        """Points per game: a win 1, a draw 0.5."""
        return (self.wins + 0.5 * self.draws) / self.games if self.games else float("nan")

    def elo(self) -> tuple[float, float]:
        """The Elo difference and half the width of its 95% interval (``elo_interval``;
        the interval is not symmetric). A perfect or zero score: ±inf, inf."""
        low, high = self.elo_interval()
        return elo_estimate(self.wins, self.draws, self.losses), (high - low) / 2

    def elo_interval(self, z: float = Z_95) -> tuple[float, float]:
        """The 95% interval of the Elo difference (``keisei.elo.elo_interval``)."""
        return elo_interval(self.wins, self.draws, self.losses, z)

    def __add__(self, other: MatchResult) -> MatchResult:
        return MatchResult(self.wins + other.wins, self.draws + other.draws,
                           self.losses + other.losses)

    def __str__(self) -> str:
        return (f"+{self.wins} ={self.draws} -{self.losses} (score {self.score:.3f}, "
                f"Elo {format_elo(self.wins, self.draws, self.losses)})")


@dataclass
class PlayedGame:
    """One game of a match: which opening, which colour the first player had."""

    index: int
    opening: int
    first_color: Color
    game: Game
    names: tuple[str, str] = ("", "")
    """(Black's name, White's name), for records."""
    notes: list[str] = field(default_factory=list)
    """Why a game was forfeited, if it was."""

    @property
    def first_points(self) -> float:
        outcome = self.game.outcome
        assert outcome is not None, "the game is not over"
        if outcome.winner is None:
            return 0.5
        return 1.0 if outcome.winner is self.first_color else 0.0


def play_match(first: Player, second: Player, openings: Sequence[Sequence[str]],
               pairs: Sequence[int], *, seed: int = 0, max_plies: int = 512) -> list[PlayedGame]:
    """Play opening ``p % len(openings)`` twice for each ``p`` in ``pairs``: game ``2p``
    with ``first`` as Black, game ``2p + 1`` with colours swapped.

    A game's random generator depends only on ``seed`` and its index, so a match split
    across processes by ``pairs`` plays the same games as one process would.
    """
    played: list[PlayedGame] = []
    for pair in pairs:
        opening = pair % len(openings)
        for index, first_color in ((2 * pair, Color.BLACK), (2 * pair + 1, Color.WHITE)):
            game = Game(max_plies=max_plies)
            for move in openings[opening]:
                game.push_usi(move)
            names = ((first.name, second.name) if first_color is Color.BLACK
                     else (second.name, first.name))
            played.append(PlayedGame(index, opening, first_color, game, names))
    rngs = [random.Random(seed * 1_000_003 + item.index) for item in played]
    while any(not item.game.is_over for item in played):
        for player, plays_first in ((first, True), (second, False)):
            turn = [position for position, item in enumerate(played) if not item.game.is_over
                    and (item.game.side_to_move is item.first_color) == plays_first]
            if not turn:
                continue
            decisions = player.choose([played[position].game for position in turn],
                                      [rngs[position] for position in turn])
            for position, decision in zip(turn, decisions, strict=True):
                apply_decision(played[position].game, decision)
    return played


def apply_decision(game: Game, decision: Decision) -> None:
    """Play a move (an illegal one loses, as ``Game.push`` rules), resign, or forfeit."""
    if decision is Special.RESIGN:
        game.resign()
    elif decision is Special.FORFEIT:
        game.forfeit()
    else:
        game.push(int(decision))


class Scored(Protocol):
    @property
    def first_points(self) -> float: ...


def tally(played: Sequence[Scored]) -> MatchResult:
    """The match result from the first player's view (of played games or their records)."""
    points = [item.first_points for item in played]
    return MatchResult(points.count(1.0), points.count(0.5), points.count(0.0))


# --- ratings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pairing:
    """A match result between two named players, from ``first``'s view."""

    first: str
    second: str
    result: MatchResult

    @property
    def wins(self) -> int:
        return self.result.wins

    @property
    def draws(self) -> int:
        return self.result.draws

    @property
    def losses(self) -> int:
        return self.result.losses

    def to_dict(self) -> dict[str, object]:
        return {"first": self.first, "second": self.second, "wins": self.result.wins,
                "draws": self.result.draws, "losses": self.result.losses}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Pairing:
        return cls(str(data["first"]), str(data["second"]),
                   MatchResult(int(data["wins"]), int(data["draws"]), int(data["losses"])))  # type: ignore[call-overload]
