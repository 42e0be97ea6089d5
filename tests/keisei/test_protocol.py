"""Every message round-trips; every malformed message is refused with a ProtocolError."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch

from keisei.config import SelfPlayConfig
from keisei.errors import RecordError
from keisei.model import PRESETS, build_model
from keisei.protocol import (
    ACCEPTED_VERSIONS,
    Ack,
    Bye,
    Games,
    Heartbeat,
    Hello,
    Pool,
    ProtocolError,
    Reject,
    Shutdown,
    Weights,
    Welcome,
    decode,
    encode,
)
from keisei.records import FinishedGame, GameRecord, replay_game
from keisei.selfplay import Collector

MAX_PLIES = 40


class ListSink:
    def __init__(self) -> None:
        self.games: list[FinishedGame] = []

    def put(self, game: FinishedGame) -> None:
        self.games.append(game)


@pytest.fixture(scope="module")
def finished() -> list[FinishedGame]:
    torch.manual_seed(0)
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=4, max_plies=MAX_PLIES),
                          sink, seed=1)
    while len(sink.games) < 4:
        collector.step(0)
    return sink.games


@pytest.mark.parametrize("message", [
    Hello("actor-1", "host", 123), Heartbeat("actor-1", 812.5, 7, 1, 90), Bye("a", "sigterm"),
    Welcome(4, "tcp://127.0.0.1:5556", {"blocks": 2}, {"games": 8}, 1.0), Reject("old", (1,)),
    Ack(), Ack(accepting=False), Shutdown("done"),
])
def test_plain_messages_round_trip(message) -> None:
    frames = encode(message)
    assert len(frames) == 1
    assert decode(frames) == message


def test_games_round_trip_and_replay_to_the_same_training_data(finished) -> None:
    frames = encode(Games("actor-1", list(finished)))
    steps = sum(game.length for game in finished)
    assert sum(memoryview(frame).nbytes for frame in frames[1:]) == 16 * steps  # 16 bytes a ply
    decoded = decode([bytes(frame) for frame in frames])
    assert isinstance(decoded, Games) and decoded.actor_id == "actor-1"
    for original, record in zip(finished, decoded.games, strict=True):
        rebuilt = replay_game(record, MAX_PLIES)
        for name in ("observations", "legal_masks", "actions", "moves", "log_probs", "values",
                     "players", "policy_versions"):
            assert np.array_equal(getattr(rebuilt, name), getattr(original, name)), name
        assert (rebuilt.winner, rebuilt.reason) == (original.winner, original.reason)


def test_weights_round_trip() -> None:
    state = {key: value.numpy() for key, value in build_model(PRESETS["tiny"]).state_dict().items()}
    decoded = decode(encode(Weights(3, state)))
    assert isinstance(decoded, Weights) and decoded.policy_version == 3
    assert decoded.tensors.keys() == state.keys()
    for key, value in state.items():
        assert np.array_equal(decoded.tensors[key], value) and decoded.tensors[key].dtype == value.dtype


def test_the_pool_round_trips_and_malformed_pools_are_refused() -> None:
    state = {key: value.numpy() for key, value in build_model(PRESETS["tiny"]).state_dict().items()}
    message = Pool(0.25, ["start", "v10"], [0.75, 0.25], "v10", state)
    decoded = decode(encode(message))
    assert isinstance(decoded, Pool)
    assert (decoded.share, decoded.names, decoded.probabilities, decoded.name) == \
        (0.25, ["start", "v10"], [0.75, 0.25], "v10")
    assert all(np.array_equal(decoded.tensors[key], value) for key, value in state.items())
    bare = decode(encode(Pool(0.25, ["start"], [1.0])))  # the table alone
    assert isinstance(bare, Pool) and bare.name == "" and bare.tensors == {}
    for bad, problem in (
            (Pool(1.5, ["a"], [1.0]), "share"),
            (Pool(0.5, ["a", "b"], [0.5]), "probabilities"),
            (Pool(0.5, ["a", "b"], [0.9, 0.3]), "sum to 1"),
            (Pool(0.5, ["a", "a"], [0.5, 0.5]), "distinct"),
            (Pool(0.5, ["a"], [1.0], "b", state), "not one of its opponents"),
            (Pool(0.5, ["a"], [1.0], "a"), "only then"),
            (Pool(0.5, ["a"], [1.0], "", state), "only then")):
        with pytest.raises(ProtocolError, match=problem):
            decode(encode(bad))


def test_hello_of_another_version_decodes_so_it_can_be_rejected() -> None:
    header = msgpack.unpackb(encode(Hello("a", "h", 1))[0])
    header.update(version=99, protocol_version=99)
    hello = decode([msgpack.packb(header)])
    assert isinstance(hello, Hello) and hello.protocol_version == 99
    header = msgpack.unpackb(encode(Reject("protocol version 4 is not accepted", (99,)))[0])
    header["version"] = 99  # a later learner's reject still says why
    reject = decode([msgpack.packb(header)])
    assert isinstance(reject, Reject) and reject.accepted_versions == (99,)
    header = msgpack.unpackb(encode(Ack())[0])
    header["version"] = 99
    with pytest.raises(ProtocolError, match="version 99 is not accepted"):
        decode([msgpack.packb(header)])


def test_a_version_1_hello_decodes_so_that_the_actor_gets_a_clear_reject() -> None:
    """Actors of protocol 1 (before 2 dropped ``games`` from ``hello``) say hello so."""
    old = {"type": "hello", "version": 1, "actor_id": "old", "host": "h", "pid": 7, "games": 64,
           "protocol_version": 1}
    hello = decode([msgpack.packb(old)])
    assert isinstance(hello, Hello) and hello.protocol_version == 1
    assert 1 not in ACCEPTED_VERSIONS


def games_frames(finished) -> list[bytes]:
    return [bytes(frame) for frame in encode(Games("a", list(finished[:2])))]


def test_malformed_messages_are_refused(finished) -> None:
    good = games_frames(finished)
    header = msgpack.unpackb(good[0])
    cases = {
        "empty": [],
        "not msgpack": [b"\xc1\xc1\xc1"],
        "not a map": [msgpack.packb([1, 2])],
        "unknown type": [msgpack.packb({"type": "launch", "version": 1})],
        "extra frame": [encode(Ack())[0], b"x"],
        "missing field": [msgpack.packb({"type": "heartbeat", "version": 1, "actor_id": "a"})],
        "bool as int": [msgpack.packb({"type": "ack", "version": 1, "policy_version": True})],
        "missing frame": good[:-1],
        "short frame (wrong dtype or shape)": [*good[:2], good[2][:-4], *good[3:]],
        "wide dtype": [*good[:1], np.frombuffer(good[1], np.int32).astype(np.int64).tobytes(), *good[2:]],
        "bad game entry": [msgpack.packb({**header, "games": [["", 0, 0, 0]]}), *good[1:]],
        "bad reason": [msgpack.packb({**header, "games": [[g[0], g[1], g[2], 99, 0, 0, "", -1]
                                                          for g in header["games"]]}), *good[1:]],
        "old game entry (protocol 3)": [msgpack.packb({**header, "games": [g[:6] for g in header["games"]]}),
                                        *good[1:]],
        "an opponent without a side": [msgpack.packb({**header, "games": [[*g[:6], "v2", -1]
                                                                          for g in header["games"]]}),
                                       *good[1:]],
        "a side without an opponent": [msgpack.packb({**header, "games": [[*g[:6], "", 1]
                                                                          for g in header["games"]]}),
                                       *good[1:]],
        "old game entry (protocol 2)": [msgpack.packb({**header, "games": [g[:4] for g in header["games"]]}),
                                        *good[1:5]],
        "oversized header": [b"\x00" * (2 << 20)],
    }
    for name, frames in cases.items():
        with pytest.raises(ProtocolError):
            decode(frames)
            pytest.fail(name)


def test_nan_and_out_of_range_values_are_refused(finished) -> None:
    good = games_frames(finished)
    for index, bad_value in ((2, np.nan), (3, np.inf), (3, 2.5), (2, 0.5)):
        array = np.frombuffer(good[index], np.float32).copy()
        array[0] = bad_value
        with pytest.raises(ProtocolError):
            decode([*good[:index], array.tobytes(), *good[index + 1:]])
    versions = np.frombuffer(good[4], np.int32).copy()
    versions[0] = -1
    with pytest.raises(ProtocolError, match="negative"):
        decode([*good[:4], versions.tobytes(), *good[5:]])


def test_replay_refuses_illegal_moves_and_false_results(finished) -> None:
    record = finished[0]
    frames = games_frames(finished)
    moves = np.frombuffer(frames[1], np.int32).copy()
    moves[1] = moves[0]  # the same move again: illegal for the other side
    bad_move = decode([frames[0], moves.tobytes(), *frames[2:]])
    with pytest.raises(RecordError, match="ply 2"):
        replay_game(bad_move.games[0], MAX_PLIES)
    header = msgpack.unpackb(games_frames(finished)[0])
    header["games"][0][2] = 1 - header["games"][0][2] if header["games"][0][2] >= 0 else 0
    lied = decode([msgpack.packb(header), *games_frames(finished)[1:]])
    with pytest.raises(RecordError, match="claimed result"):
        replay_game(lied.games[0], MAX_PLIES)
    with pytest.raises(RecordError, match="not over"):
        replay_game(record, MAX_PLIES + 100)


@pytest.fixture(scope="module")
def searched() -> list[FinishedGame]:
    """Games whose every ply carries a search target."""
    torch.manual_seed(0)
    sink = ListSink()
    collector = Collector(build_model(PRESETS["tiny"]),
                          SelfPlayConfig(games=3, max_plies=24, search_share=1.0, search_visits=8),
                          sink, seed=2)
    while len(sink.games) < 3:
        collector.step(0)
    return sink.games


def test_search_targets_cross_the_wire_and_replay_to_the_same_actions(searched) -> None:
    assert all(game.targets == game.length for game in searched)
    decoded = decode([bytes(frame) for frame in encode(Games("a", list(searched)))])
    assert isinstance(decoded, Games)
    for original, record in zip(searched, decoded.games, strict=True):
        rebuilt = replay_game(record, 24)
        for name in ("target_plies", "target_counts", "target_moves", "target_probs",
                     "target_values", "target_actions"):
            assert np.array_equal(getattr(rebuilt, name), getattr(original, name)), name
        actions, probs = rebuilt.dense_targets()
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
        masks = np.unpackbits(rebuilt.legal_masks, axis=1).astype(bool)
        rows = np.repeat(np.arange(rebuilt.length), probs.shape[1]).reshape(probs.shape)
        assert masks[rows[probs > 0], actions[probs > 0]].all()  # every target move is legal


def _with(record: FinishedGame, **arrays: np.ndarray) -> GameRecord:
    fields = {name: getattr(record, name) for name in (
        "moves", "log_probs", "values", "policy_versions", "target_plies", "target_counts",
        "target_moves", "target_probs", "target_values")}
    return GameRecord(record.start_sfen, record.winner, record.reason,
                      **{**fields, **arrays})  # type: ignore[arg-type]


def test_bad_search_targets_are_refused_naming_the_problem(searched) -> None:
    game = searched[0]
    first = int(game.target_counts[0])
    probs = game.target_probs.copy()
    probs[0] += 0.5
    moves = game.target_moves.copy()
    moves[:2] = moves[0] if first > 1 else moves[:2]
    cases = {
        "sums to": _with(game, target_probs=probs),
        "must increase": _with(game, target_plies=game.target_plies[::-1].copy()),
        "finite and non-negative": _with(game, target_probs=-game.target_probs),
        "target values": _with(game, target_values=game.target_values + 3),
        "counts sum": _with(game, target_moves=game.target_moves[:-1]),
    }
    if first > 1:
        cases["twice"] = _with(game, target_moves=moves)
    for problem, record in cases.items():
        with pytest.raises(ProtocolError, match=problem if problem != "counts sum" else "target_probs"):
            decode([bytes(frame) for frame in encode(Games("a", [record]))])
        with pytest.raises(RecordError, match=problem) as caught:
            replay_game(record, 24)
        assert caught.value.kind == "bad target"
    # a move legal elsewhere but not at the ply its target names: found on replay
    one = _with(game, target_plies=game.target_plies[:1], target_counts=np.array([1], np.int32),
                target_moves=game.moves[1:2].copy(), target_probs=np.ones(1, np.float32),
                target_values=game.target_values[:1])
    record = decode([bytes(frame) for frame in encode(Games("a", [one]))])
    assert isinstance(record, Games)
    with pytest.raises(RecordError, match="not legal") as caught:
        replay_game(record.games[0], 24)  # the second ply's move named at the first ply
    assert caught.value.kind == "bad target"
