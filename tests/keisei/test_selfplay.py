"""The collector records exactly what was played, in compact form."""

from __future__ import annotations

import numpy as np
import torch

from keisei.config import SelfPlayConfig
from keisei.encoding import encode_observation, legal_action_mask, move_to_action
from keisei.model import PRESETS, build_model
from keisei.selfplay import (
    DRAW,
    MASK_BYTES,
    OBSERVATION_BYTES,
    Collector,
    FinishedGame,
    pack_observations,
    unpack_masks,
    unpack_observations,
)
from keisei.shogi import Game


class ListSink:
    def __init__(self) -> None:
        self.games: list[FinishedGame] = []

    def put(self, game: FinishedGame) -> None:
        self.games.append(game)


def play_games(count: int, max_plies: int = 40, games: int = 4) -> tuple[Collector, ListSink]:
    torch.manual_seed(0)
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=games, max_plies=max_plies),
                          sink, seed=3, policy_version=7)
    while len(sink.games) < count:
        collector.step()
        if collector.stats.steps >= 2 * games * max_plies:
            collector.policy_version = 8
    return collector, sink


def test_finished_games_replay_exactly() -> None:
    collector, sink = play_games(6)
    for finished in sink.games:
        length = finished.length
        assert finished.observations.shape == (length, OBSERVATION_BYTES)
        assert finished.legal_masks.shape == (length, MASK_BYTES)
        assert finished.observations.dtype == np.uint8 and finished.actions.dtype == np.int16
        assert list(finished.players) == [ply % 2 for ply in range(length)]
        observations = unpack_observations(finished.observations)
        masks = unpack_masks(finished.legal_masks)
        game = Game(max_plies=40)
        for ply in range(length):
            expected = encode_observation(game.board, game.repetitions)
            assert np.array_equal(observations[ply], expected.astype(np.uint8))
            assert np.array_equal(masks[ply], legal_action_mask(game.board))
            move = int(finished.moves[ply])
            assert move_to_action(game.board, move) == finished.actions[ply]
            assert masks[ply, finished.actions[ply]]
            game.push(move)
        assert game.outcome is not None
        assert finished.reason == game.outcome.reason
        assert finished.winner == (DRAW if game.outcome.winner is None else game.outcome.winner.number)
        assert finished.to_game().outcome == game.outcome
        assert np.all(finished.log_probs <= 0) and np.all(np.abs(finished.values) <= 1)
        assert set(np.unique(finished.policy_versions)) <= {7, 8}
    assert collector.stats.games == len(sink.games)
    assert collector.stats.steps == sum(g.length for g in sink.games) + collector.in_flight_steps()


def test_policy_version_is_stamped_per_ply() -> None:
    _, sink = play_games(10, max_plies=40)
    late = [g for g in sink.games if 8 in g.policy_versions]
    assert late, "the version change should reach later games"
    for finished in late:
        versions = finished.policy_versions
        assert np.all(np.diff(versions) >= 0)  # never goes back within a game


def test_packing_round_trips() -> None:
    planes = (np.random.default_rng(0).random((3, 122, 9, 9)) > 0.5).astype(np.float32)
    assert np.array_equal(unpack_observations(pack_observations(planes)), planes.astype(np.uint8))
