"""The collector records exactly what was played, in compact form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keisei.config import SelfPlayConfig
from keisei.encoding import encode_observation, legal_action_mask, move_to_action
from keisei.model import PRESETS, build_model
from keisei.records import (
    DRAW,
    MASK_BYTES,
    OBSERVATION_BYTES,
    FinishedGame,
    GameRecord,
    pack_observations,
    replay_game,
    unpack_masks,
    unpack_observations,
)
from keisei.selfplay import Collector
from keisei.shogi import Game, mating_move


class ListSink:
    def __init__(self) -> None:
        self.games: list[FinishedGame] = []

    def put(self, game: FinishedGame) -> None:
        self.games.append(game)


def play_games(count: int, max_plies: int = 40, games: int = 4) -> tuple[Collector, ListSink]:
    torch.manual_seed(0)
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=games, max_plies=max_plies),
                          sink, seed=3)
    while len(sink.games) < count:
        collector.step(8 if collector.stats.steps >= 2 * games * max_plies else 7)
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


class RecordSink:
    def __init__(self) -> None:
        self.records: list[GameRecord] = []

    def put_record(self, record: GameRecord) -> None:
        self.records.append(record)


def test_a_record_sink_gets_the_same_games_without_training_data() -> None:
    """An actor's sink: the collector keeps no planes or masks, and the records match
    what a training sink gets from the same seed."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"])
    config = SelfPlayConfig(games=4, max_plies=30)
    records, games = RecordSink(), ListSink()
    for sink in (records, games):
        collector = Collector(model, config, sink, seed=5)
        for _ in range(60):
            collector.step(3)
        if sink is records:
            assert collector._observations.size == 0 and collector._masks.size == 0
    assert len(records.records) == len(games.games) > 0
    for record, game in zip(records.records, games.games, strict=True):
        assert type(record) is GameRecord
        assert np.array_equal(record.moves, game.moves) and record.start_sfen == game.start_sfen
        assert np.array_equal(record.log_probs, game.log_probs)
        assert (record.winner, record.reason) == (game.winner, game.reason)


def test_packing_round_trips() -> None:
    planes = (np.random.default_rng(0).random((3, 122, 9, 9)) > 0.5).astype(np.float32)
    assert np.array_equal(unpack_observations(pack_observations(planes)), planes.astype(np.uint8))


def played_games(mate_search: int, seed: int) -> tuple[Collector, list[FinishedGame]]:
    """16 games (or a few more) of a tiny network with that mate search, and its collector."""
    torch.manual_seed(0)
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]),
                          SelfPlayConfig(games=16, max_plies=300, mate_search=mate_search), sink,
                          seed=seed)
    while len(sink.games) < 16:
        collector.step(0)
    return collector, sink.games


def test_a_mate_in_one_is_played_whenever_there_is_one() -> None:
    collector, games = played_games(mate_search=1, seed=1)
    mated = 0
    for finished in games:
        game = Game(max_plies=300)
        for ply, move in enumerate(finished.moves.tolist()):
            mate = game.board.mate_move_in_1ply()
            if mate and game.board.is_legal(mate):
                assert move == mate and ply == finished.length - 1  # the game ends there
                assert -20 < finished.log_probs[ply] <= 0  # the network's own log-probability
                mated += 1
            game.push(move)
    assert mated > 0 and collector.stats.forced_mates >= mated


def test_a_forced_action_carries_the_networks_log_probability() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    collector = Collector(model, SelfPlayConfig(games=2, temperature=2.0), ListSink(), seed=1)
    observations, masks = collector._encoder.encode(collector._games)
    legal = np.flatnonzero(masks[1])
    forced = np.array([-1, legal[3]])
    actions, log_probs, _ = collector._infer(observations, masks, forced)
    with torch.inference_mode():
        logits, _ = model(torch.from_numpy(observations))
    expected = torch.log_softmax(logits[1].masked_fill(~torch.from_numpy(masks[1]), -torch.inf) / 2.0,
                                 dim=-1)[legal[3]]
    assert actions[1] == legal[3] and masks[0, actions[0]]
    assert log_probs[1] == pytest.approx(float(expected), abs=1e-5)


def test_a_longer_mate_search_finds_the_first_move_of_a_mate_in_three() -> None:
    sfen = "1n4sng/2s1rk3/lp6l/pPgpPPppp/PgPP2b1P/5nPP1/L1N1+pGs1L/R8/2B3K2 w 2Ps 116"
    found = {}
    for plies in (1, 3):
        collector = Collector(build_model(PRESETS["tiny"]),
                              SelfPlayConfig(games=1, mate_search=plies), ListSink())
        collector._games = [Game(sfen)]
        _, masks = collector._encoder.encode(collector._games)
        found[plies] = int(collector._mating_actions(masks)[0])
    game = Game(sfen)
    assert found[1] == -1  # no mate in one here
    assert found[3] == move_to_action(game.board, game.board.move_from_usi("S*3h"))


def test_forced_plies_are_marked_and_found_again_when_replayed() -> None:
    _, games = played_games(mate_search=3, seed=2)
    marked = 0
    for finished in games:
        forced = finished.forced_plies()
        game = Game(max_plies=300)
        for ply, move in enumerate(finished.moves.tolist()):
            expected = len(game.legal_moves()) == 1 or mating_move(game, 3) == move
            assert forced[ply] == expected
            game.push(move)
        replayed = replay_game(finished, 300, mate_search=3)
        assert np.array_equal(replayed.forced_plies(), forced)
        marked += int(forced.sum())
    assert marked > 0


def test_search_plays_plays_the_searchs_moves_and_marks_them_forced(monkeypatch) -> None:
    """With ``search_plays`` every searched ply plays the search's move (its winner), is
    marked forced (out of the policy-gradient term), and the replay marks it again; the
    unsearched plies stay the network's samples."""
    from keisei.search import Search

    chosen: list[int] = []
    search = Search.search

    def spy(self, games, *args, **kwargs):  # type: ignore[no-untyped-def]
        results = search(self, games, *args, **kwargs)
        chosen.append(results[0].move)
        return results

    monkeypatch.setattr(Search, "search", spy)
    torch.manual_seed(0)
    sink = ListSink()
    config = SelfPlayConfig(games=1, max_plies=30, mate_search=0, search_share=1.0,
                            search_visits=4, search_plays=True)
    collector = Collector(build_model(PRESETS["tiny"]), config, sink, seed=5)
    while not sink.games:
        collector.step(0)
    game = sink.games[0]
    assert game.moves.tolist() == chosen[:game.length]
    assert game.forced_plies().all()
    assert np.array_equal(replay_game(game, 30, search_plays=True).forced_plies(),
                          game.forced_plies())
    # the network's log-probability of the search's move is what is recorded
    assert np.all(game.log_probs <= 0) and np.all(np.isfinite(game.log_probs))

    chosen.clear()
    sink = ListSink()
    half = Collector(build_model(PRESETS["tiny"]),
                     SelfPlayConfig(games=1, max_plies=30, mate_search=0, search_share=0.5,
                                    search_visits=4, search_plays=True), sink, seed=5)
    while not sink.games:
        half.step(0)
    game = sink.games[0]
    searched = np.zeros(game.length, dtype=bool)
    searched[game.target_plies] = True
    only_move = np.array([len(item) == 1 for item in _legal_lists(game)])
    assert 0 < searched.sum() < game.length
    assert np.array_equal(game.forced_plies(), searched | only_move)
    assert game.moves[searched].tolist() == chosen[:int(searched.sum())]
    assert np.array_equal(replay_game(game, 30, search_plays=True).forced_plies(),
                          game.forced_plies())
    # replayed without the setting, the searched plies would count as the network's
    assert not replay_game(game, 30).forced_plies()[searched & ~only_move].any()


def _legal_lists(finished: FinishedGame) -> list[list[int]]:
    game = Game(max_plies=finished.length)
    lists = []
    for move in finished.moves.tolist():
        lists.append(game.legal_moves())
        game.push(move)
    return lists
