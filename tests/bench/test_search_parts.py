"""bench.search_parts: its searcher's halves come from where they are asked for."""

from __future__ import annotations

import math

import numpy as np
import torch

from bench.search_parts import PartsNet
from keisei.config import ModelConfig
from keisei.encoding import NUM_ACTIONS, encode_observation
from keisei.model import PolicyValueNet
from keisei.shogi import Game

SMALL = ModelConfig(blocks=1, channels=8)
# Black has a rook in hand and White lacks its rook: Black is 20 up (rook 10 each way)
ROOK_UP = "lnsgkgsnl/7b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b R 1"


def observations(*sfens: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([encode_observation(Game(sfen).board) for sfen in sfens]))


def test_the_material_value_is_the_squashed_balance_from_the_movers_view() -> None:
    net = PartsNet(None, None, scale=10.0)
    white_to_move = ROOK_UP.replace(" b ", " w ")
    logits, values = net(observations(Game().board.sfen(), ROOK_UP, white_to_move))
    assert logits.shape == (3, NUM_ACTIONS) and not logits.any()  # uniform prior
    # hand-computed: even; +20 pawns for Black; -20 for White, to move
    assert np.allclose(values.numpy(), [0.0, math.tanh(2.0), -math.tanh(2.0)], atol=1e-6)


def test_each_half_comes_from_its_own_network() -> None:
    torch.manual_seed(0)
    prior, value = PolicyValueNet(SMALL).eval(), PolicyValueNet(SMALL).eval()
    batch = observations(Game().board.sfen(), ROOK_UP)
    with torch.no_grad():
        logits, values = PartsNet(prior, value, scale=10.0)(batch)
        assert torch.equal(logits, prior(batch)[0])
        assert torch.equal(values, value(batch)[1])
        material_values = PartsNet(prior, None, scale=10.0)(batch)[1]
    assert np.allclose(material_values.numpy(), [0.0, math.tanh(2.0)], atol=1e-6)
