"""Buffer contract: whole games in, exact epochs out, every step once, stale steps counted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from keisei.records import (
    DRAW,
    MASK_BYTES,
    OBSERVATION_BYTES,
    FinishedGame,
    GameRecord,
    replay_game,
)
from keisei.shogi import STARTING_SFEN, Game, Termination
from learner.buffer import BufferFullError, EpochBatch, ExperienceBuffer


def fake_game(length: int, first_id: int, version: int = 0, winner: int = 0) -> FinishedGame:
    """A game whose actions are unique ids, so every step can be traced."""
    return FinishedGame(
        observations=np.full((length, OBSERVATION_BYTES), 1, np.uint8),
        legal_masks=np.full((length, MASK_BYTES), 255, np.uint8),
        actions=np.arange(first_id, first_id + length, dtype=np.int16),
        moves=np.zeros(length, np.int32), log_probs=np.full(length, -1.0, np.float32),
        values=np.zeros(length, np.float32), players=(np.arange(length) % 2).astype(np.uint8),
        policy_versions=np.full(length, version, np.int32), winner=winner,
        reason=Termination.CHECKMATE, start_sfen=STARTING_SFEN)


def make_buffer(steps_per_epoch: int = 10, capacity: int = 40, lag: int = 2) -> ExperienceBuffer:
    return ExperienceBuffer(steps_per_epoch, capacity, gamma=1.0, gae_lambda=1.0, max_policy_lag=lag)


def test_epochs_are_exact_and_every_step_is_handed_out_once_in_order() -> None:
    buffer = make_buffer()
    next_id, seen = 0, []
    for length in (7, 5, 9, 3, 6):
        buffer.put(fake_game(length, next_id))
        next_id += length
        while buffer.ready():
            batch = buffer.take_epoch()
            buffer.commit_epoch()
            assert batch.size == 10
            seen.extend(batch.actions.tolist())
    assert seen == list(range(30))  # FIFO, no loss, no duplicate; games split across epochs
    assert buffer.size == next_id - 30 == 0
    assert buffer.steps_accepted == 30


def test_advantages_are_computed_on_the_whole_game() -> None:
    buffer = make_buffer(steps_per_epoch=4)
    buffer.put(fake_game(4, 0, winner=1))
    batch = buffer.take_epoch()
    assert batch.returns.tolist() == [-1, 1, -1, 1]  # white won; black moved on even plies


def test_a_draw_penalty_reaches_both_players_returns_and_a_win_is_untouched() -> None:
    buffer = ExperienceBuffer(4, 16, gamma=1.0, gae_lambda=1.0, max_policy_lag=2,
                              draw_reward=-0.25)
    buffer.put(fake_game(4, 0, winner=DRAW))
    buffer.put(fake_game(4, 4, winner=0))
    drawn = buffer.take_epoch()
    buffer.commit_epoch()
    won = buffer.take_epoch()
    assert drawn.returns.tolist() == [-0.25] * 4  # values 0: the advantages are the same
    assert drawn.advantages.tolist() == [-0.25] * 4
    assert won.returns.tolist() == [1, -1, 1, -1]


def test_stale_steps_are_dropped_and_counted() -> None:
    buffer = make_buffer(lag=2)
    buffer.policy_version = lambda: 5
    assert buffer.put(fake_game(4, 0, version=2)) == 0  # 3 versions old
    assert buffer.put(fake_game(4, 10, version=3)) == 4  # exactly max_policy_lag old
    assert buffer.steps_dropped_stale == 4 and buffer.size == 4


def test_full_buffer_refuses_without_partial_writes() -> None:
    buffer = make_buffer(steps_per_epoch=10, capacity=12)
    buffer.put(fake_game(8, 0))
    with pytest.raises(BufferFullError, match="does not fit"):
        buffer.put(fake_game(8, 100))
    assert buffer.size == 8 and buffer.steps_accepted == 8


def test_restore_puts_an_epoch_back_in_front_even_after_refilling() -> None:
    buffer = make_buffer(steps_per_epoch=10, capacity=24)
    buffer.put(fake_game(14, 0))
    batch = buffer.take_epoch()
    buffer.put(fake_game(10, 100))  # arrives during the update; the epoch's room stays reserved
    with pytest.raises(BufferFullError):
        buffer.put(fake_game(2, 200))
    buffer.restore_epoch(batch)
    assert buffer.size == 24
    assert buffer.take_epoch().actions.tolist() == list(range(10))
    with pytest.raises(RuntimeError, match="reserved"):
        buffer.take_epoch()


def test_state_dict_round_trip_keeps_held_steps() -> None:
    buffer = make_buffer()
    buffer.put(fake_game(6, 0))
    other = make_buffer()
    other.load_state_dict(buffer.state_dict())
    other.put(fake_game(4, 6))
    assert other.take_epoch().actions.tolist() == list(range(10))
    other.commit_epoch()
    with pytest.raises(ValueError, match="columns"):
        other.load_state_dict({"actions": buffer.state_dict()["actions"]})


def test_tally_counts_results() -> None:
    buffer = make_buffer(capacity=100)
    buffer.put(fake_game(3, 0, winner=0))
    buffer.put(fake_game(3, 0, winner=-1))
    tally = buffer.drain_tally()
    assert (tally.games, tally.black, tally.white, tally.draws, tally.plies) == (2, 1, 0, 1, 6)
    assert buffer.drain_tally().games == 0


def bishop_exchange() -> FinishedGame:
    """A real 4-ply game, stopped at the ply limit: both bishops come off the board."""
    game = Game(max_plies=4)
    moves = [game.push_usi(usi) for usi in ("7g7f", "3c3d", "8h2b+", "3a2b")]
    assert game.outcome is not None and game.outcome.reason == Termination.MAX_PLIES
    record = GameRecord(STARTING_SFEN, DRAW, Termination.MAX_PLIES, np.array(moves, np.int32),
                        np.full(4, -1.0, np.float32), np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                        np.zeros(4, np.int32))
    return replay_game(record, max_plies=4)


def test_a_known_game_with_and_without_shaping() -> None:
    def batch_of(**options: object) -> EpochBatch:
        buffer = ExperienceBuffer(4, 8, gamma=1.0, gae_lambda=1.0, max_policy_lag=2,
                                  **options)  # type: ignore[arg-type]
        buffer.put(bishop_exchange())
        return buffer.take_epoch()

    plain = batch_of()
    assert plain.returns == pytest.approx([0, 0, 0, 0], abs=1e-6)  # a draw
    assert plain.shaping_advantages.tolist() == [0, 0, 0, 0]  # shaping off: nothing stored
    shaped = batch_of(shaping=True)
    # Material from each mover's view is 0, 0, 0, then -18 for White after 8h2b+ (Black's
    # horse and a bishop in hand against none). 3c3d let the bishop go: -18; 8h2b+ took it
    # (+18); White's recapture is the game's last ply, credited with no change.
    assert shaped.shaping_advantages.tolist() == [0, -18, 18, 0]
    assert shaped.returns.tolist() == plain.returns.tolist()  # the value learns the result
    # A material mix: each ply's mover's material at its next turn (ply 1, White: -18 after
    # 8h2b+; ply 2, Black's last: +18 at White's reply), the game's last ply its result alone.
    mixed = batch_of(value_material_mix=0.5, value_material_scale=9.0)
    assert mixed.returns == pytest.approx([0.0, 0.5 * math.tanh(-2.0), 0.5 * math.tanh(2.0), 0.0],
                                          abs=1e-6)
    assert mixed.advantages.tolist() == plain.advantages.tolist()  # the policy's are untouched


def test_a_buffer_saved_before_shaping_existed_still_loads() -> None:
    buffer = make_buffer()
    buffer.put(fake_game(6, 0))
    state = {name: tensor for name, tensor in buffer.state_dict().items()
             if name != "shaping_advantages"}
    other = make_buffer()
    other.load_state_dict(state)
    other.put(fake_game(4, 6))
    batch = other.take_epoch()
    assert batch.actions.tolist() == list(range(10))
    assert batch.shaping_advantages.tolist() == [0.0] * 10


def test_a_mate_played_by_the_mate_search_becomes_its_plies_target() -> None:
    game = fake_game(6, 0)
    masks = np.zeros((6, MASK_BYTES), np.uint8)
    masks[:, 0] = 0b11000000  # two legal moves on every ply ...
    masks[4, 0] = 0b10000000  # ... but one on ply 4
    forced = np.array([False, False, True, False, True, False])
    game = FinishedGame(**{**vars(game), "legal_masks": masks, "forced": forced})
    buffer = make_buffer(steps_per_epoch=6)
    buffer.put(game)
    batch = buffer.take_epoch()
    assert batch.forced.tolist() == forced.tolist()
    # ply 2 had a choice: the mate search's move is its target; ply 4 had none
    assert batch.search_actions[2, 0] == 2 and batch.search_probs[2].tolist() == [1.0] + [0.0] * 31
    assert batch.search_probs.sum(axis=1).tolist() == [0, 0, 1, 0, 0, 0]


def test_a_buffer_saved_before_forced_plies_loads_with_none_forced() -> None:
    buffer = make_buffer()
    buffer.put(fake_game(6, 0))
    state = {name: tensor for name, tensor in buffer.state_dict().items() if name != "forced"}
    other = make_buffer()
    other.load_state_dict(state)
    other.put(fake_game(4, 6))
    assert not other.take_epoch().forced.any()


def test_the_value_target_takes_its_own_lambda_and_mixes_in_the_search_value() -> None:
    game = fake_game(4, 0, winner=0)  # black (plies 0 and 2) wins
    game = FinishedGame(**{**vars(game), "values": np.array([0.5, -0.5, 0.2, 0.0], np.float32),
                           "target_plies": np.array([0], np.int32),
                           "target_counts": np.array([1], np.int32),
                           "target_moves": np.array([0], np.int32),
                           "target_probs": np.array([1.0], np.float32),
                           "target_values": np.array([0.8], np.float32),
                           "target_actions": np.array([0], np.int16)})
    buffer = ExperienceBuffer(4, 8, gamma=1.0, gae_lambda=0.0, max_policy_lag=2,
                              value_lambda=1.0, search_value_mix=0.25)
    buffer.put(game)
    batch = buffer.take_epoch()
    # advantages at lambda 0: black's ply 0 is V(2) - V(0) = 0.2 - 0.5, its ply 2 is 1 - 0.2;
    # white's: 0 - (-0.5) and -1 - 0
    assert batch.advantages.tolist() == pytest.approx([-0.3, 0.5, 0.8, -1.0])
    # returns at lambda 1 are the result, and ply 0's is mixed with its search value 0.8
    assert batch.returns.tolist() == pytest.approx([0.75 * 1 + 0.25 * 0.8, -1.0, 1.0, -1.0])


def test_only_the_learners_plies_of_a_pool_game_enter_the_buffer() -> None:
    trained = np.arange(8) % 2 == 1  # the learner plays white
    game = FinishedGame(**{**vars(fake_game(8, 0, winner=1)), "trained": trained})
    buffer = make_buffer(steps_per_epoch=4)
    assert buffer.put(game) == 4 and game.steps == 4
    batch = buffer.take_epoch()
    assert batch.actions.tolist() == [1, 3, 5, 7]
    assert batch.returns.tolist() == [1.0] * 4  # white won: its own returns, over its plies
    assert buffer.steps_dropped_stale == 0
