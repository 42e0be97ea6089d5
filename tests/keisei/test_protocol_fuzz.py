"""Property-based fuzzing of the decoder: whatever a peer sends, ``decode`` returns a
message or raises ``ProtocolError``, never anything else, and what it returns passes
the checks the learner relies on. 12 000 generated and mutated messages in all."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keisei.protocol import (
    Bye,
    Games,
    Heartbeat,
    Hello,
    Limits,
    MessageType,
    ProtocolError,
    Weights,
    decode,
    encode,
)
from keisei.records import GameRecord
from keisei.shogi import STARTING_SFEN, Termination

LIMITS = Limits(max_message_bytes=1 << 20, max_games_per_message=64, max_plies_per_game=512)
def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def record(length: int, seed: int) -> GameRecord:
    rng = np.random.default_rng(seed)
    return GameRecord(STARTING_SFEN, int(rng.integers(-1, 2)), Termination.CHECKMATE,
                      rng.integers(0, 1 << 16, length).astype(np.int32),
                      -rng.random(length).astype(np.float32),
                      (rng.random(length) * 2 - 1).astype(np.float32),
                      rng.integers(0, 5, length).astype(np.int32))


VALID = [encode(Hello("a", "h", 1)), encode(Heartbeat("a", 10.0, 3, 0, 0)),
         encode(Bye("a", "done")), encode(Games("a", [record(7, 1), record(3, 2)])),
         encode(Weights(2, {"w": np.ones((2, 3), np.float32), "n": np.arange(4, dtype=np.int64)}))]


def check(frames: list[bytes]) -> None:
    try:
        message = decode(frames, LIMITS)
    except ProtocolError:
        return
    if isinstance(message, Games):  # what the server relies on before replaying
        for game in message.games:
            assert 1 <= game.length <= LIMITS.max_plies_per_game
            assert np.isfinite(game.log_probs).all() and (game.log_probs <= 1e-3).all()
            assert (np.abs(game.values) <= 1 + 1e-3).all() and (game.policy_versions >= 0).all()


values = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
                      | st.binary(max_size=20),
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=6)
headers = st.fixed_dictionaries(
    {"type": st.sampled_from([str(kind) for kind in MessageType]) | st.text(max_size=8),
     "version": st.sampled_from([1, 0, 2, -1]) | values},
    optional={name: values for name in ("actor_id", "host", "pid", "games", "policy_version",
                                        "steps_per_second", "reason", "accepting", "tensors")})


@fuzz(2500)
@given(headers, st.lists(st.binary(max_size=64), max_size=5))
def test_generated_headers_with_arbitrary_frames(header: dict, payload: list[bytes]) -> None:
    check([msgpack.packb(header, use_bin_type=True), *payload])


@fuzz(3500)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_arbitrary_bytes(frames: list[bytes]) -> None:
    check(frames)


@fuzz(6000)
@given(st.sampled_from(range(len(VALID))), st.data())
def test_mutated_valid_messages(index: int, data: st.DataObject) -> None:
    frames = [bytearray(bytes(frame)) for frame in VALID[index]]
    for _ in range(data.draw(st.integers(1, 4))):
        target = data.draw(st.integers(0, len(frames) - 1))
        frame = frames[target]
        action = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop", "duplicate"]))
        if action == "flip" and frame:
            position = data.draw(st.integers(0, len(frame) - 1))
            frame[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            del frame[data.draw(st.integers(0, len(frame))):]
        elif action == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=16))
        elif action == "drop" and len(frames) > 1:
            frames.pop(target)
        elif action == "duplicate":
            frames.insert(target, bytearray(frame))
    check([bytes(frame) for frame in frames])

