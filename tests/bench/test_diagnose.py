"""bench.diagnose: its figures, hand-computed for a network whose answers are known."""

from __future__ import annotations

import math

import pytest

from bench.diagnose import Position, measure
from bench.search_parts import PartsNet
from keisei.shogi import Game

# Black has a rook in hand and White lacks its rook: the material value is tanh(2)
ROOK_UP = "lnsgkgsnl/7b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b R 1"


def test_a_uniform_policy_and_a_material_value_give_the_hand_computed_figures() -> None:
    start, rook_up = Game(), Game(ROOK_UP)
    items = [Position(start, start.legal_moves()[0], 1.0),
             Position(rook_up, rook_up.legal_moves()[0], -1.0),
             Position(rook_up.copy(), rook_up.legal_moves()[1], math.nan)]  # result unknown
    counts = [len(item.game.legal_moves()) for item in items]
    figures = measure(PartsNet(None, None, scale=10.0), items, batch=2)  # two batches
    assert counts[0] == 30 and counts[1] > 30
    assert figures.positions == 3 and figures.decided == 2
    # a uniform policy: the entropy is log(legal moves), the move played gets 1/legal moves
    assert figures.entropy == pytest.approx(sum(math.log(count) for count in counts) / 3, rel=1e-5)
    assert figures.played_probability == pytest.approx(sum(1 / count for count in counts) / 3,
                                                       rel=1e-5)
    # values 0 (even) and tanh(2) against results +1 and -1; the sign of 0 matches neither
    assert figures.value_mse == pytest.approx((1.0 + (math.tanh(2.0) + 1.0) ** 2) / 2, rel=1e-5)
    assert figures.value_sign == 0.0
