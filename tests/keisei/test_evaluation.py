"""Match bookkeeping and the batched match against a random player."""

from __future__ import annotations

import math

import pytest
import torch

from keisei.evaluation import MatchResult, play_against_random
from keisei.model import PRESETS, build_model


def test_score_and_elo_arithmetic() -> None:
    even = MatchResult(wins=10, draws=0, losses=10)
    assert even.score == 0.5 and even.elo()[0] == pytest.approx(0.0)
    better = MatchResult(wins=75, draws=0, losses=25)
    assert better.elo()[0] == pytest.approx(-400 * math.log10(1 / 0.75 - 1))  # +190.8
    assert MatchResult(1, 2, 1).score == 0.5
    # the interval shrinks with more games at the same score
    assert MatchResult(300, 0, 100).elo()[1] < better.elo()[1]
    assert MatchResult(5, 0, 0).elo() == (math.inf, math.inf)
    assert "+75 =0 -25" in str(better)


def test_match_against_random_plays_every_game_to_the_end() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    result = play_against_random(model, 6, seed=1, max_plies=60)
    assert result.games == 6
    assert play_against_random(model, 6, seed=1, max_plies=60) == result  # reproducible
