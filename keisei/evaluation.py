"""Matches between a network and simple opponents, played many games at once.

``play_against_random`` plays N games (half with each colour) between a network that
picks its most probable legal move and a uniformly random player; the network's
positions are evaluated in one batch per ply across all games.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from keisei.encoding import BatchEncoder
from keisei.model import autocast, masked_logits
from keisei.shogi import Color, Game


@dataclass(frozen=True)
class MatchResult:
    """Wins, draws and losses from the first player's (the network's) view."""

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
        """Elo difference and the half-width of its 95% interval (normal approximation).

        A perfect or zero score has no finite estimate: ±inf.
        """
        if self.games == 0:
            return float("nan"), float("nan")
        score = self.score
        if score <= 0.0 or score >= 1.0:
            return (math.inf if score >= 1.0 else -math.inf), math.inf
        per_game = [1.0] * self.wins + [0.5] * self.draws + [0.0] * self.losses
        deviation = float(np.std(per_game)) / math.sqrt(self.games)
        low = max(score - 1.96 * deviation, 1e-6)
        high = min(score + 1.96 * deviation, 1 - 1e-6)
        return _elo(score), (_elo(high) - _elo(low)) / 2

    def __str__(self) -> str:
        elo, margin = self.elo()
        return (f"+{self.wins} ={self.draws} -{self.losses} (score {self.score:.3f}, "
                f"Elo {elo:+.0f} ± {margin:.0f})")


def _elo(score: float) -> float:
    return -400.0 * math.log10(1.0 / score - 1.0)


def play_against_random(model: nn.Module, games: int, *, seed: int = 0, max_plies: int = 512,
                        device: str | torch.device = "cpu",
                        autocast_dtype: torch.dtype | None = None) -> MatchResult:
    """The network (greedy over its masked policy) against uniform random moves.

    The network plays Black in the first half of the games and White in the rest.
    """
    device = torch.device(device)
    rng = random.Random(seed)
    boards = [Game(max_plies=max_plies) for _ in range(games)]
    network_color = [Color.BLACK if index < (games + 1) // 2 else Color.WHITE
                     for index in range(games)]
    encoder = BatchEncoder(games)
    model.eval()
    while True:
        live = [index for index, game in enumerate(boards) if not game.is_over]
        if not live:
            break
        to_network = [index for index in live if boards[index].side_to_move is network_color[index]]
        for index in live:
            if boards[index].side_to_move is not network_color[index]:
                boards[index].push(rng.choice(boards[index].legal_moves()))
        if to_network:
            batch = [boards[index] for index in to_network]
            observations, masks = encoder.encode(batch)
            with torch.inference_mode(), autocast(device, autocast_dtype):
                logits, _ = model(torch.from_numpy(observations).to(device))
                choice = masked_logits(logits.float(), torch.from_numpy(masks).to(device)).argmax(-1)
            for game, move in zip(batch, encoder.moves_for(choice.cpu().numpy()).tolist(), strict=True):
                game.push(move)
    return _tally(boards, network_color)


def _tally(games: list[Game], network_color: list[Color]) -> MatchResult:
    wins = draws = losses = 0
    for game, color in zip(games, network_color, strict=True):
        assert game.outcome is not None
        if game.outcome.winner is None:
            draws += 1
        elif game.outcome.winner is color:
            wins += 1
        else:
            losses += 1
    return MatchResult(wins, draws, losses)
