"""Elo: every estimate, interval and rating fit Keisei prints or stores comes from here.

* ``elo_of_score``: the Elo difference at which the expected score is a given score.
* ``elo_interval``: one match's 95% interval, from the Wilson score interval with draws
  counted by their lower per-game variance; it stays sensible at extreme scores (a
  perfect score gives a finite lower bound and +inf). Logs, tables and reports all show
  this interval (``format_elo``).
* ``fit_ratings``: one rating per player from many matches (Bradley-Terry maximum
  likelihood, a draw half a win to each side), anchored on one player.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

ANCHOR = "random"
"""The player rated 0: uniform random moves (``evaluation.RandomPlayer``)."""

Z_95 = 1.959964
"""The normal quantile of a two-sided 95% interval."""


def elo_of_score(score: float) -> float:
    """The Elo difference at which the expected score is ``score`` (0 < score < 1)."""
    return -400.0 * math.log10(1.0 / score - 1.0)


def elo_estimate(wins: int, draws: int, losses: int) -> float:
    """The Elo difference implied by the score (±inf for a perfect or zero score; NaN
    without games)."""
    games = wins + draws + losses
    if games == 0:
        return math.nan
    score = (wins + 0.5 * draws) / games
    if score <= 0.0 or score >= 1.0:
        return math.inf if score >= 1.0 else -math.inf
    return elo_of_score(score) + 0.0  # + 0.0: no "-0" at an even score


def elo_interval(wins: int, draws: int, losses: int, z: float = Z_95) -> tuple[float, float]:
    """The interval of the Elo difference (95% at the default ``z``): the Wilson score
    interval, with the games scaled by ``p(1 - p) / variance`` so that draws, whose
    per-game variance is lower, count as more effective games."""
    games = float(wins + draws + losses)
    if games == 0:
        return math.nan, math.nan
    score = (wins + 0.5 * draws) / games
    variance = (wins * (1 - score) ** 2 + draws * (0.5 - score) ** 2 + losses * score ** 2) / games
    if variance > 0:
        games *= score * (1 - score) / variance
    center = (score + z * z / (2 * games)) / (1 + z * z / games)
    spread = z * math.sqrt(score * (1 - score) / games + z * z / (4 * games * games)) / (1 + z * z / games)
    low, high = center - spread, center + spread
    edge = 1e-12  # a zero or perfect score puts a bound at 0 or 1 (up to rounding)
    return (elo_of_score(low) if low > edge else -math.inf,
            elo_of_score(high) if high < 1 - edge else math.inf)


def format_elo(wins: int, draws: int, losses: int) -> str:
    """``+191 [+119, +282]``: the estimate and its 95% interval; ``-`` without games."""
    def signed(value: float) -> str:
        return ("+inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:+.0f}"

    elo = elo_estimate(wins, draws, losses)
    if math.isnan(elo):
        return "-"
    low, high = elo_interval(wins, draws, losses)
    return f"{signed(elo)} [{signed(low)}, {signed(high)}]"


class Scored(Protocol):
    """A match between two named players, from ``first``'s view (``evaluation.Pairing``)."""

    @property
    def first(self) -> str: ...
    @property
    def second(self) -> str: ...
    @property
    def wins(self) -> int: ...
    @property
    def draws(self) -> int: ...
    @property
    def losses(self) -> int: ...


def fit_ratings(pairings: Sequence[Scored], anchor: str = ANCHOR, *, prior_draws: float = 1.0,
                iterations: int = 10_000) -> dict[str, float]:
    """One Elo rating per player, anchored so that ``anchor`` is 0.

    Bradley-Terry maximum likelihood by minorise-maximise iteration (Hunter 2004), a draw
    counting half a win to each side. ``prior_draws`` virtual draws are added to every
    pairing so a perfect score gives a large but finite rating.

    :raises ValueError: if ``anchor`` played no game, or a player is not connected to it.
    """
    players = sorted({p.first for p in pairings} | {p.second for p in pairings})
    if anchor not in players:
        raise ValueError(f"the anchor {anchor!r} played no rated game")
    index = {name: position for position, name in enumerate(players)}
    size = len(players)
    games = np.zeros((size, size))
    points = np.zeros(size)
    for pairing in pairings:
        a, b = index[pairing.first], index[pairing.second]
        played = pairing.wins + pairing.draws + pairing.losses
        if a == b or played == 0:
            continue
        total = played + prior_draws
        games[a, b] += total
        games[b, a] += total
        points[a] += pairing.wins + 0.5 * (pairing.draws + prior_draws)
        points[b] += pairing.losses + 0.5 * (pairing.draws + prior_draws)
    _check_connected(players, games, index[anchor])
    strength = np.ones(size)
    for _ in range(iterations):
        denominators = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = points / denominators
        updated /= np.exp(np.log(updated).mean())
        if np.max(np.abs(updated - strength) / strength) < 1e-10:
            strength = updated
            break
        strength = updated
    ratings = 400.0 * np.log10(strength / strength[index[anchor]])
    return {name: float(ratings[index[name]]) for name in players}


def _check_connected(players: list[str], games: np.ndarray, anchor: int) -> None:
    reached, frontier = {anchor}, [anchor]
    while frontier:
        current = frontier.pop()
        for other in np.nonzero(games[current])[0]:
            if int(other) not in reached:
                reached.add(int(other))
                frontier.append(int(other))
    missing = [players[position] for position in range(len(players)) if position not in reached]
    if missing:
        raise ValueError(f"no chain of games links {missing} to the anchor {players[anchor]!r}")
