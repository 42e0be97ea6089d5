"""bench.diagnose: its figures, hand-computed for a network whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from bench.diagnose import Position, measure
from bench.search_parts import PartsNet
from keisei.config import ModelConfig
from keisei.encoding import legal_actions
from keisei.model import build_model
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


def test_the_prior_head_row_measures_the_priors_the_search_takes() -> None:
    """A prior head that puts all its weight on the move played: its row gives that move
    probability 1, top-1 1 and entropy 0, while the policy head's row does not."""
    start = Game()
    move = start.legal_moves()[3]
    model = build_model(ModelConfig(blocks=1, channels=8, value_hidden=8, prior_head=True)).eval()
    assert model.prior_bias is not None
    with torch.no_grad():
        model.prior_bias[int(legal_actions(start.board, [move])[0])] = 1000.0
    items = [Position(start, move, 1.0)]
    prior, policy = measure(model, items, prior=True), measure(model, items)
    assert prior.top1 == 1.0 and prior.played_probability == pytest.approx(1.0)
    assert prior.entropy == pytest.approx(0.0, abs=1e-6)
    assert policy.played_probability < 0.5 and policy.entropy > 1.0
    assert prior.value_mse == pytest.approx(policy.value_mse)  # one value head
