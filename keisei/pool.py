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
with ``state_dict`` and a resumed run takes it back with ``load_state_dict``.
"""

from __future__ import annotations

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
        self.opponents: list[Opponent] = []

    def __len__(self) -> int:
        return len(self.opponents)

    def names(self) -> list[str]:
        return [opponent.name for opponent in self.opponents]

    def add(self, name: str, weights: dict[str, torch.Tensor], pinned: bool = False) -> None:
        """Add a copy of ``weights`` as ``name`` (replacing one of that name), evicting the
        oldest unpinned opponents while more than ``size`` unpinned ones are held."""
        copy = {key: value.detach().to("cpu", copy=True) for key, value in weights.items()}
        self.opponents = [opponent for opponent in self.opponents if opponent.name != name]
        self.opponents.append(Opponent(name, copy, pinned))
        unpinned = [opponent for opponent in self.opponents if not opponent.pinned]
        for opponent in unpinned[:max(0, len(unpinned) - self.size)]:
            self.opponents.remove(opponent)

    def get(self, name: str) -> Opponent | None:
        for opponent in self.opponents:
            if opponent.name == name:
                return opponent
        return None

    def probabilities(self) -> np.ndarray:
        """Each opponent's PFSP probability of being drawn."""
        return pfsp_weights(np.array([opponent.win_rate for opponent in self.opponents]),
                            self.power)

    def sample(self, rng: np.random.Generator) -> Opponent:
        """Draw an opponent by PFSP.

        :raises LookupError: if the pool is empty.
        """
        if not self.opponents:
            raise LookupError("the opponent pool is empty")
        return self.opponents[int(rng.choice(len(self.opponents), p=self.probabilities()))]

    def record(self, name: str, score: float) -> None:
        """The learner scored ``score`` (1, 0.5 or 0) in a game against ``name`` (ignored if
        that opponent has left the pool meanwhile)."""
        opponent = self.get(name)
        if opponent is not None:
            opponent.score += score
            opponent.games += 1

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "power": self.power,
                "opponents": [{"name": opponent.name, "weights": opponent.weights,
                               "pinned": opponent.pinned, "score": opponent.score,
                               "games": opponent.games} for opponent in self.opponents]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A saved pool's opponents and results (this pool keeps its own size and power;
        the oldest unpinned opponents leave if the saved pool held more)."""
        self.opponents = []
        for item in state["opponents"]:
            self.add(str(item["name"]), item["weights"], bool(item["pinned"]))
            self.opponents[-1].score = float(item["score"])
            self.opponents[-1].games = int(item["games"])
