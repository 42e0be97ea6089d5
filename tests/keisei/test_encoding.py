"""The action mapping is a bijection on legal moves; observations are from the mover's view."""

from __future__ import annotations

import random

import numpy as np
import pytest
from cshogi import dlshogi

from keisei.encoding import (
    NUM_ACTIONS,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    BatchEncoder,
    action_to_move,
    describe_action,
    encode_observation,
    legal_action_mask,
    material_balance,
    move_to_action,
)
from keisei.errors import IllegalMoveError
from keisei.records import pack_observations
from keisei.shogi import STARTING_SFEN, Game


def random_positions(count: int, seed: int) -> list[Game]:
    """Positions from random self-play, copies taken along the way (both colours to move)."""
    rng = random.Random(seed)
    positions: list[Game] = []
    while len(positions) < count:
        game = Game(max_plies=300)
        while not game.is_over and len(positions) < count:
            if rng.random() < 0.1:
                positions.append(Game.from_position(game.to_position()))
            game.push(rng.choice(game.legal_moves()))
    return positions


def test_action_mapping_is_a_bijection_on_legal_moves_for_both_colours() -> None:
    rng = random.Random(0)
    colours_seen = set()
    for game in random_positions(3000, seed=1):
        board = game.board
        moves = game.legal_moves()
        actions = [move_to_action(board, move) for move in moves]
        assert len(set(actions)) == len(moves)  # injective
        mask = legal_action_mask(board)
        assert mask.sum() == len(moves) and mask[actions].all()  # onto the set bits
        # identical to dlshogi's labels (an independent implementation, in C++)
        assert actions == [dlshogi.make_move_label(move, board.turn) for move in moves]
        for move in rng.sample(moves, min(3, len(moves))):
            assert action_to_move(board, move_to_action(board, move)) == move
        colours_seen.add(board.turn)
    assert colours_seen == {0, 1}


def test_action_to_move_rejects_an_illegal_action() -> None:
    game = Game()
    illegal = int(np.flatnonzero(~legal_action_mask(game.board))[0])
    with pytest.raises(IllegalMoveError, match=str(illegal)):
        action_to_move(game.board, illegal)
    assert "out of range" in describe_action(NUM_ACTIONS)


def test_observation_is_from_the_side_to_move() -> None:
    game = Game()
    black_view = encode_observation(game.board)
    assert black_view.shape == OBSERVATION_SHAPE == (NUM_PLANES, 9, 9)
    assert black_view.dtype == np.float32
    # own pawns (plane 0) on rank g (index 6) of all nine files
    assert np.array_equal(np.argwhere(black_view[0]), [[file, 6] for file in range(9)])
    # their pawns (plane 31) on rank c
    assert np.array_equal(np.argwhere(black_view[31]), [[file, 2] for file in range(9)])
    game.push_usi("1g1f")
    white_view = encode_observation(game.board)
    # White sees its own pawns on its rank g too: the board is rotated
    assert np.array_equal(np.argwhere(white_view[0]), [[file, 6] for file in range(9)])
    # and Black's advanced 1f pawn as "their" pawn on (rotated) file 9, rank d
    assert white_view[31, 8, 3] == 1 and white_view[31, 8, 2] == 0


def test_hand_check_and_repetition_planes() -> None:
    game = Game("4k4/9/9/9/9/9/9/9/4K4 b 2P 1")
    planes = encode_observation(game.board)
    assert planes[62].all() and planes[63].all() and not planes[64].any()  # two pawns in hand
    game.push_usi("P*5b")
    planes = encode_observation(game.board)
    assert planes[118].all()  # white is in check
    assert not planes[62].any() and planes[90].all()  # the pawns are Black's ("their") hand
    game = Game()
    for usi in ("5i4h", "5a4b", "4h5i", "4b5a") * 2:
        game.push_usi(usi)
    planes = encode_observation(game.board, game.repetitions)
    assert game.repetitions == 2
    assert planes[119].all() and planes[120].all() and not planes[121].any()
    assert encode_observation(game.board)[119].all()  # from the board's own history


def test_batch_encoder_matches_single_encoding_and_maps_actions_back() -> None:
    games = [game for game in random_positions(200, seed=2) if not game.is_over][:64]
    encoder = BatchEncoder(64)
    observations, masks = encoder.encode(games)
    rng = np.random.default_rng(0)
    chosen = []
    for index, game in enumerate(games):
        assert np.array_equal(observations[index], encode_observation(game.board, game.repetitions))
        assert np.array_equal(masks[index], legal_action_mask(game.board))
        chosen.append(rng.choice(np.flatnonzero(masks[index])))
    moves = encoder.moves_for(np.asarray(chosen))
    for game, action, move in zip(games, chosen, moves, strict=True):
        assert move in game.legal_moves()
        assert move_to_action(game.board, int(move)) == action
    with pytest.raises(IllegalMoveError):
        encoder.moves_for(np.zeros(len(games), dtype=np.int64) + int(np.flatnonzero(~masks[0])[0]))
    with pytest.raises(ValueError, match="capacity"):
        encoder.encode(games + games)


def test_material_balance_counts_board_and_hand_from_the_movers_view() -> None:
    def balance(sfen: str) -> float:
        planes = encode_observation(Game(sfen).board)[None]
        return float(material_balance(pack_observations(planes))[0])

    assert balance(STARTING_SFEN) == 0
    # Black to move: a rook and two pawns in hand against White's bare gold (kings count 0)
    assert balance("4k4/9/9/9/9/9/9/3g5/4K4 b R2P 1") == 10 + 2 - 6
    assert balance("4k4/9/9/9/9/9/9/g8/4K4 w R2P 1") == -(10 + 2 - 6)  # the same, seen by White
    # a promoted bishop on the board and a capped count of pawns in hand (8 hand planes)
    assert balance("4k4/9/9/9/9/9/9/9/+B3K4 b 9P 1") == 10 + 8
