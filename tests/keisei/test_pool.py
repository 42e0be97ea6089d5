"""The opponent pool: PFSP sampling by its formula, eviction, results, saving."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from keisei.config import SelfPlayConfig
from keisei.errors import RecordError
from keisei.model import PRESETS, build_model, masked_logits
from keisei.pool import MirroredPool, OpponentPool, pfsp_weights
from keisei.protocol import Games, decode, encode
from keisei.records import replay_game, unpack_masks, unpack_observations
from keisei.selfplay import Collector


def test_pfsp_weights_follow_their_formula() -> None:
    rates = np.array([0.2, 0.5, 0.9])
    expected = np.array([0.8 ** 2, 0.5 ** 2, 0.1 ** 2])
    assert pfsp_weights(rates, 2.0) == pytest.approx(expected / expected.sum())
    assert pfsp_weights(rates, 0.0) == pytest.approx([1 / 3] * 3)  # power 0: uniform
    assert pfsp_weights(np.array([1.0, 1.0]), 2.0) == pytest.approx([0.5, 0.5])


def test_the_pool_samples_by_the_learners_results_and_evicts_the_oldest_unpinned() -> None:
    weights = {"w": torch.zeros(2)}
    pool = OpponentPool(size=2, power=1.0)
    pool.add("start", weights, pinned=True)
    for name in ("v1", "v2", "v3"):
        pool.add(name, weights)
    assert pool.names() == ["start", "v2", "v3"]  # v1 left first; start is pinned, not counted
    for _ in range(8):
        pool.record("v2", 1.0)  # the learner beats v2: (8 + 1) / (8 + 2) = 0.9
    pool.record("v3", 0.5)  # one draw: (0.5 + 1) / 3 = 0.5
    pool.record("gone", 1.0)  # an opponent no longer held is ignored
    rates = [opponent.win_rate for opponent in pool.opponents]
    assert rates == pytest.approx([0.5, 0.9, 0.5])
    expected = np.array([0.5, 0.1, 0.5]) / 1.1
    assert pool.probabilities() == pytest.approx(expected)
    rng = np.random.default_rng(0)
    draws = [pool.sample(rng).name for _ in range(4000)]
    assert draws.count("v2") / 4000 == pytest.approx(expected[1], abs=0.02)


def test_the_pool_round_trips_through_its_state() -> None:
    pool = OpponentPool(size=4, power=2.0)
    pool.add("start", {"w": torch.ones(3)}, pinned=True)
    pool.add("v10", {"w": torch.full((3,), 2.0)})
    pool.record("v10", 0.0)
    other = OpponentPool(size=4, power=2.0)
    other.load_state_dict(pool.state_dict())
    assert other.names() == ["start", "v10"] and other.opponents[0].pinned
    assert (other.opponents[1].games, other.opponents[1].score) == (1, 0.0)
    assert torch.equal(other.opponents[1].weights["w"], torch.full((3,), 2.0))
    with pytest.raises(LookupError):
        OpponentPool(2, 1.0).sample(np.random.default_rng(0))


class ListSink:
    def __init__(self) -> None:
        self.games: list = []

    def put(self, game: object) -> None:
        self.games.append(game)


def test_a_pool_game_trains_only_the_learners_side_and_reports_its_result() -> None:
    torch.manual_seed(0)
    learner_model = build_model(PRESETS["tiny"]).eval()
    opponent_model = build_model(PRESETS["tiny"]).eval()
    pool = OpponentPool(size=2, power=2.0)
    pool.add("old", opponent_model.state_dict())
    sink = ListSink()
    collector = Collector(learner_model, SelfPlayConfig(games=4, max_plies=40, mate_search=0),
                          sink, seed=3)
    collector.play_pool(pool, 1.0, lambda: build_model(PRESETS["tiny"]))
    collector.discard_in_flight()  # start every slot afresh, now as pool games
    sides = collector._learner_sides.copy()
    assert collector._opponents == ["old"] * 4
    while len(sink.games) < 4:
        collector.step(0)
    for game in sink.games[:4]:
        trained = game.trained_plies()
        sides_here = {int(side) for side in set(game.players[trained].tolist())}
        assert len(sides_here) == 1 and not set(game.players[~trained].tolist()) & sides_here
        assert game.steps == int(trained.sum()) < game.length
    assert set(sides.tolist()) <= {0, 1}
    assert pool.opponents[0].games == collector.stats.pool_games >= 4
    # the opponent's plies were chosen by its network: their log-probabilities are its own
    game = sink.games[0]
    replayed = replay_game(game, 40)
    rows = np.flatnonzero(~game.trained_plies())
    observations = torch.from_numpy(unpack_observations(replayed.observations[rows])).float()
    legal = torch.from_numpy(unpack_masks(replayed.legal_masks[rows]))
    with torch.no_grad():
        logits, _ = opponent_model(observations)
    log_probs = torch.log_softmax(masked_logits(logits, legal), dim=-1)
    chosen = log_probs.gather(1, torch.from_numpy(game.actions[rows]).long()[:, None]).squeeze(1)
    assert chosen.numpy() == pytest.approx(game.log_probs[rows], abs=1e-4)


def playing_the_pool(name: str, size: int, seed: int) -> tuple[OpponentPool, ListSink, Collector]:
    """A pool of one random network, ``name``, and two 30-ply games started against it."""
    pool = OpponentPool(size=size, power=2.0)
    pool.add(name, build_model(PRESETS["tiny"]).state_dict())
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]).eval(),
                          SelfPlayConfig(games=2, max_plies=30, mate_search=0), sink, seed=seed)
    collector.play_pool(pool, 1.0, lambda: build_model(PRESETS["tiny"]))
    collector.discard_in_flight()  # start every slot afresh, as pool games
    return pool, sink, collector


def test_an_opponent_that_leaves_mid_game_leaves_its_side_untrained() -> None:
    torch.manual_seed(1)
    pool, sink, collector = playing_the_pool("old", size=1, seed=5)
    # "old" leaves the pool before its network was ever needed
    pool.add("newer", build_model(PRESETS["tiny"]).state_dict())
    while len(sink.games) < 2:
        collector.step(0)
    for game in sink.games[:2]:  # the learner's side trains, the other never, to the end
        trained = game.trained_plies()
        assert len(set(game.players[trained].tolist())) == 1
        assert not set(game.players[trained].tolist()) & set(game.players[~trained].tolist())
        assert 0 < trained.sum() < game.length
    assert pool.get("old") is None and pool.opponents[0].games == 0  # no result for "newer"


def test_a_pool_game_crosses_the_wire_and_replays_to_the_same_trained_plies() -> None:
    torch.manual_seed(2)
    _, sink, collector = playing_the_pool("v3", size=2, seed=7)
    while len(sink.games) < 2:
        collector.step(0)
    played = sink.games[0]
    assert played.opponent == "v3" and played.learner_side in (0, 1)
    decoded = decode([bytes(frame) for frame in encode(Games("a", [played]))])
    assert isinstance(decoded, Games)
    record = decoded.games[0]
    assert (record.opponent, record.learner_side) == ("v3", played.learner_side)
    replayed = replay_game(record, 30)
    assert np.array_equal(replayed.trained_plies(), played.trained_plies())
    assert np.array_equal(replayed.trained_plies(), replayed.players == played.learner_side)
    assert replayed.steps == played.steps < played.length


def test_a_record_must_name_both_its_opponent_and_the_learners_side_or_neither() -> None:
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]).eval(),
                          SelfPlayConfig(games=1, max_plies=20, mate_search=0), sink, seed=1)
    while not sink.games:
        collector.step(0)
    game = sink.games[0]
    assert (game.opponent, game.learner_side, game.trained) == ("", -1, None)  # self-play
    for opponent, side in (("", 0), ("v1", -1), ("v1", 2)):
        with pytest.raises(RecordError, match="learner side"):
            replay_game(dataclasses.replace(game, opponent=opponent, learner_side=side), 20)


def test_a_mirrored_pool_draws_by_the_learners_probabilities_over_the_opponents_it_holds() -> None:
    mirror = MirroredPool()
    weights = build_model(PRESETS["tiny"]).state_dict()
    mirror.update(["start", "v2", "v4"], [0.5, 0.3, 0.2])
    assert len(mirror) == 0 and mirror.missing() == ["start", "v2", "v4"]
    mirror.update(["start", "v2", "v4"], [0.5, 0.3, 0.2], "v2", weights)
    mirror.update(["start", "v2", "v4"], [0.5, 0.3, 0.2], "v4", weights)
    assert mirror.names() == ["v2", "v4"] and mirror.missing() == ["start"]
    assert mirror.probabilities() == pytest.approx([0.6, 0.4])  # 0.3 and 0.2, renormalised
    rng = np.random.default_rng(0)
    draws = [mirror.sample(rng).name for _ in range(4000)]
    assert draws.count("v2") / 4000 == pytest.approx(0.6, abs=0.03)
    mirror.record("v2", 1.0)  # results are the learner's to keep
    assert mirror.get("v2") is not None and mirror.get("v2").games == 0
    mirror.update(["start", "v4", "v6"], [0.2, 0.3, 0.5])  # v2 left the learner's pool
    assert mirror.names() == ["v4"] and mirror.probabilities() == pytest.approx([1.0])
    mirror.update(["v4"], [1.0], "v9", weights)  # weights of a name not in the table: ignored
    assert mirror.names() == ["v4"]
