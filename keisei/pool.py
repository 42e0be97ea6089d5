"""The opponent pool: past policies that a share of self-play games is played against.

Naive self-play is forgetful: a policy that only meets itself can lose what beat an
earlier self. AlphaGo drew each game's opponent from earlier iterations, OpenAI Five
played 20% of its games against past selves, and AlphaStar weighted its opponents by
prioritised fictitious self-play (PFSP): an opponent the learner beats with rate ``x``
is drawn with weight ``(1 - x) ** power``, so the ones it still loses to come up most.

``OpponentPool`` holds the opponents' weights and the learner's results against each.
The win rate it samples by is ``(score + 1) / (games + 2)`` (a Laplace prior of one
draw-like half point each way, so a new opponent starts at 0.5). A pinned opponent (the
start network of an ``--init-from`` run) is never evicted and not counted; the others
leave oldest first once the pool holds more than ``size`` of them. The pool is plain data: checkpoints save it
with ``state_dict`` and a resumed run takes it back with ``load_state_dict``. Its methods
hold a lock: the learner's server thread records the results of actors' pool games.

Actors play pool games too. The learner publishes the pool (``keisei.protocol.Pool``: the
share, each opponent's PFSP probability, and one opponent's weights a message), and an
actor keeps a ``MirroredPool``: the learner's probabilities over the opponents whose
weights it holds. The results go back in the games, and the learner records them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def pfsp_weights(win_rates: np.ndarray, power: float) -> np.ndarray:
    """The PFSP sampling probabilities ``(1 - x) ** power``, normalised, of the learner's
    win rates ``x`` against each opponent (uniform when every weight is 0: the learner
    beats them all for sure)."""
    weights = np.clip(1.0 - np.asarray(win_rates, dtype=np.float64), 0.0, 1.0) ** power
    total = weights.sum()
    if not len(weights):
        return weights
    if total <= 0:
        return np.full(len(weights), 1.0 / len(weights))
    result: np.ndarray = weights / total
    return result


@dataclass
class Opponent:
    """One past policy: its ``name``, weights (on the CPU), whether it is pinned, and the
    learner's ``score`` (1 a win, 0.5 a draw) over ``games`` against it."""

    name: str
    weights: dict[str, torch.Tensor]
    pinned: bool = False
    score: float = 0.0
    games: int = 0

    @property
    def win_rate(self) -> float:
        return (self.score + 1.0) / (self.games + 2.0)


class OpponentPool:
    """Past policies and the learner's results against them (see the module docstring)."""

    def __init__(self, size: int, power: float) -> None:
        if size < 1:
            raise ValueError(f"an opponent pool holds at least 1 policy, not {size}")
        self.size = size
        self.power = power
        self.opponents: list[Opponent] = []  # replaced, never changed in place
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.opponents)

    def names(self) -> list[str]:
        return [opponent.name for opponent in self.opponents]

    def snapshot(self) -> tuple[list[Opponent], np.ndarray]:
        """The opponents and their PFSP probabilities, read together."""
        with self._lock:
            return list(self.opponents), self.probabilities()

    def add(self, name: str, weights: dict[str, torch.Tensor], pinned: bool = False) -> None:
        """Add a copy of ``weights`` as ``name`` (replacing one of that name), evicting the
        oldest unpinned opponents while more than ``size`` unpinned ones are held."""
        copy = {key: value.detach().to("cpu", copy=True) for key, value in weights.items()}
        with self._lock:
            opponents = [opponent for opponent in self.opponents if opponent.name != name]
            opponents.append(Opponent(name, copy, pinned))
            unpinned = [opponent for opponent in opponents if not opponent.pinned]
            evicted = {id(opponent) for opponent in unpinned[:max(0, len(unpinned) - self.size)]}
            self.opponents = [opponent for opponent in opponents if id(opponent) not in evicted]

    def get(self, name: str) -> Opponent | None:
        for opponent in self.opponents:
            if opponent.name == name:
                return opponent
        return None

    def probabilities(self) -> np.ndarray:
        """Each opponent's PFSP probability of being drawn."""
        with self._lock:
            return pfsp_weights(np.array([opponent.win_rate for opponent in self.opponents]),
                                self.power)

    def sample(self, rng: np.random.Generator) -> Opponent:
        """Draw an opponent by PFSP.

        :raises LookupError: if the pool is empty.
        """
        opponents, probabilities = self.snapshot()
        if not opponents:
            raise LookupError("the opponent pool is empty")
        return opponents[int(rng.choice(len(opponents), p=probabilities))]

    def record(self, name: str, score: float) -> None:
        """The learner scored ``score`` (1, 0.5 or 0) in a game against ``name`` (ignored if
        that opponent has left the pool meanwhile)."""
        with self._lock:
            opponent = self.get(name)
            if opponent is not None:
                opponent.score += score
                opponent.games += 1

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"size": self.size, "power": self.power,
                    "opponents": [{"name": opponent.name, "weights": opponent.weights,
                                   "pinned": opponent.pinned, "score": opponent.score,
                                   "games": opponent.games} for opponent in self.opponents]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A saved pool's opponents and results (this pool keeps its own size and power;
        the oldest unpinned opponents leave if the saved pool held more)."""
        with self._lock:
            self.opponents = []
            for item in state["opponents"]:
                self.add(str(item["name"]), item["weights"], bool(item["pinned"]))
                self.opponents[-1].score = float(item["score"])
                self.opponents[-1].games = int(item["games"])


class MirroredPool(OpponentPool):
    """An actor's copy of its learner's pool: the learner's PFSP probabilities (it keeps
    the results), over the opponents whose weights have arrived so far, renormalised.
    ``record`` keeps nothing here: the results travel in the games."""

    def __init__(self) -> None:
        super().__init__(size=MAX_MIRRORED, power=0.0)
        self._table: dict[str, float] = {}

    def update(self, names: Sequence[str], probabilities: Sequence[float], name: str = "",
               weights: dict[str, torch.Tensor] | None = None) -> None:
        """The learner's latest table, and ``name``'s ``weights`` if they came with it; an
        opponent no longer in the table leaves."""
        with self._lock:
            self._table = dict(zip(names, (float(p) for p in probabilities), strict=True))
            if name and weights is not None and name in self._table:
                self.add(name, weights, pinned=True)  # the learner evicts; never this copy
            self.opponents = [opponent for opponent in self.opponents if opponent.name in self._table]

    def missing(self) -> list[str]:
        """The learner's opponents whose weights have not arrived yet."""
        with self._lock:
            held = set(self.names())
            return [name for name in self._table if name not in held]

    def probabilities(self) -> np.ndarray:
        with self._lock:
            chances = np.array([self._table[opponent.name] for opponent in self.opponents],
                               dtype=np.float64)
            total = chances.sum()
            if total <= 0:
                return np.full(len(chances), 1.0 / max(len(chances), 1))
            result: np.ndarray = chances / total
            return result

    def record(self, name: str, score: float) -> None:
        """Nothing: the learner records the results of the games it is sent."""


MAX_MIRRORED = 1001
"""The most opponents an actor's mirror holds (the protocol's limit)."""
