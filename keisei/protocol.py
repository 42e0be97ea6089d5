"""The wire protocol between actors and the learner: every message, encoded and checked.

Transport (ZeroMQ): actors talk to the learner's ROUTER from a DEALER (``hello``,
``heartbeat``, ``games``, ``bye``); the learner answers over the ROUTER (``welcome``,
``reject``, ``ack``, ``shutdown``) and publishes ``weights`` on a PUB socket, and, with an
opponent pool (``pool.share``), ``pool`` beside them.

Each message is a multipart list of frames: frame 0 is a small msgpack header (a map
with ``type`` and ``version``), then numpy arrays as raw frames (sent without copying).
Nothing is ever pickled. ``decode`` checks the header size, the message type and
protocol version, every field's type and range, and every array's dtype, shape and
byte length against what the protocol expects (not merely what the header claims),
and that floats are finite. Any violation raises ``ProtocolError`` naming it.

A finished game crosses the wire as its start position and moves plus, per ply, the
behaviour log-probability, value and policy version: 16 bytes a ply; and its search
targets, if any (``selfplay.search_share``): per target the ply, the count and the root
value, and per target move the move and its probability. A game against the opponent
pool names the opponent and the colour the learner's policy played. The learner
replays the moves through ``keisei.shogi.Game`` (``keisei.records.replay_game``),
which rebuilds the observation planes and legal masks and rejects any illegal move
or misreported result. Bit-packed planes and masks would be about 1 510 bytes a ply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import zmq.auth

from keisei.cli import add_version
from keisei.errors import KeiseiError, RecordError
from keisei.records import TARGET_WIDTH, GameRecord, check_targets
from keisei.shogi import Termination

DEFAULT_BIND = "tcp://127.0.0.1:5555"
"""Where the learner's ROUTER listens unless told otherwise (weights one port above)."""

PROTOCOL_VERSION = 7
"""7: the ``welcome``'s ``model`` names ``prior_head`` (``model.prior_head``: a version-6
actor would refuse the key, and its searches would not take the prior head's priors).
6: the ``welcome``'s ``selfplay`` names ``search_plays`` (``selfplay.search_plays``: a
version-5 actor would refuse the key, and would not play the search's moves). 5: the
``welcome``'s ``model`` names ``norm`` (``model.norm``: a version-4 actor would refuse the
key). 4: the ``pool`` message (the learner's opponent pool, one opponent's
weights at a time), and each game names its pool opponent and the learner's colour (``""``
and -1 in self-play). 3: games carry search targets (five more array frames) and ``welcome`` the learner's
``search`` settings. 2: ``hello`` no longer carries ``games``, ``heartbeat`` no longer
``games_sent`` and ``ack`` no longer ``policy_version`` (nothing read them); actors
heartbeat at the ``welcome``'s ``heartbeat_interval``."""
ACCEPTED_VERSIONS = (7,)
WEIGHTS_TOPIC = b"weights"
POOL_TOPIC = b"pool"
MAX_HEADER_BYTES = 1 << 20
MAX_GAMES_PER_MESSAGE = 4096
MAX_PLIES_PER_GAME = 10_000
MAX_WEIGHT_BYTES = 1 << 31
MAX_POOL_OPPONENTS = 1001  # pool.size's largest, and the start network


@dataclass(frozen=True)
class Limits:
    """What ``decode`` accepts from a peer (the learner sets them from ``[wire]``)."""

    max_message_bytes: int = 64 << 20
    max_games_per_message: int = MAX_GAMES_PER_MESSAGE
    max_plies_per_game: int = MAX_PLIES_PER_GAME

Frame = bytes | memoryview


class ProtocolError(KeiseiError, ValueError):
    """A message is malformed, oversized, of the wrong version, or carries bad values."""


class MessageType(StrEnum):
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    GAMES = "games"
    BYE = "bye"
    WELCOME = "welcome"
    REJECT = "reject"
    ACK = "ack"
    SHUTDOWN = "shutdown"
    WEIGHTS = "weights"
    POOL = "pool"


@dataclass(frozen=True)
class Hello:
    actor_id: str
    host: str
    pid: int
    protocol_version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Heartbeat:
    actor_id: str
    steps_per_second: float  # the actor's own playing rate (its log); the learner reports
    # what it received instead (``learner.actors``)
    policy_version: int
    batches_dropped: int = 0
    steps_dropped: int = 0


@dataclass(frozen=True, eq=False)
class Games:
    actor_id: str
    games: list[GameRecord]


@dataclass(frozen=True)
class Bye:
    actor_id: str
    reason: str = ""


@dataclass(frozen=True)
class Welcome:
    policy_version: int
    weights_endpoint: str
    model: dict[str, Any]
    selfplay: dict[str, Any]
    heartbeat_interval: float  # seconds between the actor's heartbeats
    search: dict[str, Any] = field(default_factory=dict)  # the learner's [search] settings


@dataclass(frozen=True)
class Reject:
    reason: str
    accepted_versions: tuple[int, ...] = ACCEPTED_VERSIONS


@dataclass(frozen=True)
class Ack:
    """The learner's answer to a heartbeat. ``accepting`` False asks the actor to pause
    (its games would only wait, grow stale and take CPU from the learner)."""

    accepting: bool = True


@dataclass(frozen=True)
class Shutdown:
    reason: str = ""


@dataclass(frozen=True, eq=False)
class Weights:
    policy_version: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Pool:
    """The learner's opponent pool, published beside the weights: the ``share`` of new
    games to play against it, each opponent's name and PFSP probability (the learner keeps
    the results and so the probabilities), and the weights of one of them, ``name`` (none:
    ``""``). The opponents take turns, so each message is one network's size and an actor
    that joins late holds every opponent after ``len(names)`` messages."""

    share: float
    names: list[str]
    probabilities: list[float]
    name: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


Message = Hello | Heartbeat | Games | Bye | Welcome | Reject | Ack | Shutdown | Weights | Pool

_TYPES: dict[type, MessageType] = {
    Hello: MessageType.HELLO, Heartbeat: MessageType.HEARTBEAT, Games: MessageType.GAMES,
    Bye: MessageType.BYE, Welcome: MessageType.WELCOME, Reject: MessageType.REJECT,
    Ack: MessageType.ACK, Shutdown: MessageType.SHUTDOWN, Weights: MessageType.WEIGHTS,
    Pool: MessageType.POOL,
}
_REASONS = list(Termination)
# Per-ply arrays of a games message, in frame order, with their one allowed dtype.
GAME_ARRAYS = (("moves", np.dtype(np.int32)), ("log_probs", np.dtype(np.float32)),
               ("values", np.dtype(np.float32)), ("policy_versions", np.dtype(np.int32)))
# Per-target arrays, then per-target-move arrays (search targets), in frame order.
TARGET_ARRAYS = (("target_plies", np.dtype(np.int32)), ("target_counts", np.dtype(np.int32)),
                 ("target_values", np.dtype(np.float32)))
TARGET_MOVE_ARRAYS = (("target_moves", np.dtype(np.int32)), ("target_probs", np.dtype(np.float32)))
_ALL_GAME_ARRAYS = GAME_ARRAYS + TARGET_ARRAYS + TARGET_MOVE_ARRAYS
_WEIGHT_DTYPES = {"float32", "float16", "int64"}


# --- encoding -------------------------------------------------------------------------
def encode(message: Message) -> list[Frame]:
    """Frames for ``message``: a msgpack header, then raw array frames (games, weights)."""
    kind = _TYPES[type(message)]
    header: dict[str, Any] = {"type": str(kind), "version": PROTOCOL_VERSION}
    frames: list[Frame] = []
    if isinstance(message, Games):
        header["actor_id"] = message.actor_id
        header["games"] = [[game.start_sfen, game.length, game.winner, _REASONS.index(game.reason),
                            game.targets, len(game.target_moves), game.opponent, game.learner_side]
                           for game in message.games]
        for name, dtype in _ALL_GAME_ARRAYS:
            joined = np.concatenate([np.asarray(getattr(game, name), dtype=dtype)
                                     for game in message.games]) if message.games else np.zeros(0, dtype)
            frames.append(_raw(joined))
    elif isinstance(message, Weights | Pool):
        if isinstance(message, Weights):
            header["policy_version"] = message.policy_version
        else:
            header.update(share=message.share, names=list(message.names),
                          probabilities=[float(p) for p in message.probabilities], name=message.name)
        header["tensors"] = []
        for name, array in message.tensors.items():
            header["tensors"].append([name, str(array.dtype), list(array.shape)])
            frames.append(_raw(array))
    else:
        header.update(_plain_fields(message))
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _raw(array: np.ndarray) -> memoryview:
    """The array's bytes as a frame, without copying when it is already contiguous."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _plain_fields(message: Message) -> dict[str, Any]:
    values = dict(vars(message))
    if isinstance(message, Reject):
        values["accepted_versions"] = list(message.accepted_versions)
    return values


# --- decoding -------------------------------------------------------------------------
def decode(frames: Sequence[Frame], limits: Limits | None = None) -> Message:
    """Check and decode a message's frames (without a ROUTER identity frame). Sizes are
    checked before anything is copied; games are held to ``limits`` (default: the
    protocol's maxima; weights, from the learner, only to ``MAX_WEIGHT_BYTES``).

    :raises ProtocolError: naming what is wrong.
    """
    if not frames:
        raise ProtocolError("empty message")
    limits = limits if limits is not None else Limits()
    header = _read_header(frames[0])
    kind = header.get("type")
    if kind not in MessageType.__members__.values():
        raise ProtocolError(f"unknown message type {kind!r}")
    kind = MessageType(str(kind))
    version = header.get("version")
    if kind in (MessageType.HELLO, MessageType.REJECT):
        # A hello of another version still decodes, so the learner can answer with a
        # reject, and a reject of another version too, so that an actor reads the reason.
        _expect(header, "version", int)
    elif version not in ACCEPTED_VERSIONS:
        raise ProtocolError(f"protocol version {version!r} is not accepted "
                            f"(accepted: {', '.join(map(str, ACCEPTED_VERSIONS))})")
    payload = frames[1:]
    if kind is MessageType.GAMES:
        size = sum(memoryview(frame).nbytes for frame in frames)
        if size > limits.max_message_bytes:
            raise ProtocolError(f"games message of {size} bytes exceeds {limits.max_message_bytes}")
        return _decode_games(header, payload, limits)
    if kind is MessageType.WEIGHTS:
        return Weights(_expect(header, "policy_version", int, 0), _decode_tensors(header, payload))
    if kind is MessageType.POOL:
        return _decode_pool(header, payload)
    if payload:
        raise ProtocolError(f"{kind} message has {len(payload)} unexpected extra frames")
    return _decode_plain(kind, header)


def _read_header(frame: Frame) -> dict[str, Any]:
    size = memoryview(frame).nbytes
    if size > MAX_HEADER_BYTES:  # checked before the header is copied
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    data = bytes(frame)
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not a map")
    return header


def _expect(header: dict[str, Any], name: str, kind: type | tuple[type, ...],
            low: float | None = None, high: float | None = None) -> Any:
    value: Any = header.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(f"field {name!r} = {value!r} is not of the expected type")
    value = cast(Any, value)
    if kind is float or kind == (int, float):
        if not np.isfinite(value):
            raise ProtocolError(f"field {name!r} = {value!r} is not finite")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ProtocolError(f"field {name!r} = {value!r} is out of range [{low}, {high}]")
    return value


_TEXT = 256  # longest actor id, host name or reason accepted


def _text(header: dict[str, Any], name: str) -> str:
    value = _expect(header, name, str)
    if len(value) > _TEXT:
        raise ProtocolError(f"field {name!r} is longer than {_TEXT} characters")
    return str(value)


def _decode_plain(kind: MessageType, header: dict[str, Any]) -> Message:
    number = (int, float)
    if kind is MessageType.HELLO:
        return Hello(_text(header, "actor_id"), _text(header, "host"),
                     _expect(header, "pid", int, 0), _expect(header, "protocol_version", int))
    if kind is MessageType.HEARTBEAT:
        return Heartbeat(_text(header, "actor_id"), float(_expect(header, "steps_per_second", number, 0)),
                         _expect(header, "policy_version", int, -1),
                         _expect(header, "batches_dropped", int, 0),
                         _expect(header, "steps_dropped", int, 0))
    if kind is MessageType.BYE:
        return Bye(_text(header, "actor_id"), _text(header, "reason"))
    if kind is MessageType.WELCOME:
        return Welcome(_expect(header, "policy_version", int, 0), _text(header, "weights_endpoint"),
                       _expect(header, "model", dict), _expect(header, "selfplay", dict),
                       float(_expect(header, "heartbeat_interval", number, 0.01, 3600)),
                       _expect(header, "search", dict))
    if kind is MessageType.REJECT:
        versions = _expect(header, "accepted_versions", list)
        return Reject(_text(header, "reason"), tuple(int(v) for v in versions))
    if kind is MessageType.ACK:
        accepting = header.get("accepting")
        if not isinstance(accepting, bool):
            raise ProtocolError(f"field 'accepting' = {accepting!r} is not a boolean")
        return Ack(accepting)
    return Shutdown(_text(header, "reason"))


def _array(frame: Frame, dtype: np.dtype, length: int, name: str) -> np.ndarray:
    data = memoryview(frame)
    if data.nbytes != length * dtype.itemsize:
        raise ProtocolError(f"array {name!r}: {data.nbytes} bytes, expected {length} x {dtype} "
                            f"= {length * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype)


def _decode_games(header: dict[str, Any], payload: Sequence[Frame], limits: Limits) -> Games:
    actor_id = _text(header, "actor_id")
    entries = _expect(header, "games", list)
    most = limits.max_games_per_message
    if not 1 <= len(entries) <= most:
        raise ProtocolError(f"games message holds {len(entries)} games (1..{most})")
    if len(payload) != len(_ALL_GAME_ARRAYS):
        raise ProtocolError(f"games message has {len(payload)} array frames, expected "
                            f"{len(_ALL_GAME_ARRAYS)}")
    lengths, target_counts, move_counts = [], [], []
    for index, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 8 and isinstance(entry[0], str)
                and isinstance(entry[6], str)
                and all(isinstance(item, int) and not isinstance(item, bool)
                        for item in (*entry[1:6], entry[7]))):
            raise ProtocolError(f"game {index}: entry {entry!r} is not [sfen, length, winner, "
                                "reason, targets, target moves, opponent, learner side]")
        sfen, length, winner, reason, targets, target_moves, opponent, side = entry
        if len(opponent) > _TEXT or side not in (-1, 0, 1) or (side >= 0) != bool(opponent):
            raise ProtocolError(f"game {index}: opponent {opponent!r} with learner side {side} "
                                "(a pool game names both, a self-play game neither)")
        if not 1 <= length <= limits.max_plies_per_game or winner not in (-1, 0, 1) \
                or not 0 <= reason < len(_REASONS) or len(sfen) > _TEXT:
            raise ProtocolError(f"game {index}: length {length}, winner {winner} or reason {reason} "
                                "out of range")
        if not 0 <= targets <= length or not targets <= target_moves <= targets * TARGET_WIDTH:
            raise ProtocolError(f"game {index}: {targets} search targets with {target_moves} moves "
                                f"in {length} plies (at most one a ply, 1..{TARGET_WIDTH} moves each)")
        lengths.append(length)
        target_counts.append(targets)
        move_counts.append(target_moves)
    sizes = {name: sum(lengths) for name, _ in GAME_ARRAYS}
    sizes.update({name: sum(target_counts) for name, _ in TARGET_ARRAYS})
    sizes.update({name: sum(move_counts) for name, _ in TARGET_MOVE_ARRAYS})
    arrays = {name: _array(frame, dtype, sizes[name], name)
              for (name, dtype), frame in zip(_ALL_GAME_ARRAYS, payload, strict=True)}
    log_probs, values = arrays["log_probs"], arrays["values"]
    if not (np.isfinite(log_probs).all() and np.isfinite(values).all()):
        raise ProtocolError("games message carries NaN or infinite log-probabilities or values")
    if (log_probs > 1e-3).any() or (np.abs(values) > 1.0 + 1e-3).any():
        raise ProtocolError("games message carries log-probabilities above 0 or values outside [-1, 1]")
    if (arrays["policy_versions"] < 0).any():
        raise ProtocolError("games message carries negative policy versions")
    bounds = {name: np.cumsum([0, *counts]) for name, counts in
              (("ply", lengths), ("target", target_counts), ("move", move_counts))}
    kinds = {**{name: "ply" for name, _ in GAME_ARRAYS},
             **{name: "target" for name, _ in TARGET_ARRAYS},
             **{name: "move" for name, _ in TARGET_MOVE_ARRAYS}}
    games = []
    for i, entry in enumerate(entries):
        parts = {name: array[bounds[kinds[name]][i]:bounds[kinds[name]][i + 1]]
                 for name, array in arrays.items()}
        game = GameRecord(start_sfen=entry[0], winner=entry[2], reason=_REASONS[entry[3]], **parts,
                          opponent=entry[6], learner_side=entry[7])
        try:
            check_targets(game)
        except RecordError as exc:
            raise ProtocolError(f"game {i}: {exc}") from exc
        games.append(game)
    return Games(actor_id, games)


def _decode_pool(header: dict[str, Any], payload: Sequence[Frame]) -> Pool:
    share = float(_expect(header, "share", (int, float), 0.0, 1.0))
    names, probabilities = _expect(header, "names", list), _expect(header, "probabilities", list)
    name = _text(header, "name")
    if len(names) > MAX_POOL_OPPONENTS or len(probabilities) != len(names):
        raise ProtocolError(f"pool: {len(names)} names and {len(probabilities)} probabilities "
                            f"(equal, at most {MAX_POOL_OPPONENTS})")
    if not all(isinstance(item, str) and 0 < len(item) <= _TEXT for item in names) \
            or len(set(names)) != len(names):
        raise ProtocolError("pool: the names must be distinct, non-empty strings")
    if not all(isinstance(p, int | float) and not isinstance(p, bool) and np.isfinite(p) and p >= 0
               for p in probabilities) or (names and abs(sum(probabilities) - 1.0) > 1e-3):
        raise ProtocolError("pool: the probabilities must be finite, non-negative and sum to 1")
    if name and name not in names:
        raise ProtocolError(f"pool: weights for {name!r}, not one of its opponents")
    tensors = _decode_tensors(header, payload)
    if bool(name) != bool(tensors):
        raise ProtocolError("pool: weights come with the name of their opponent, and only then")
    return Pool(share, [str(item) for item in names], [float(p) for p in probabilities], name, tensors)


def _decode_tensors(header: dict[str, Any], payload: Sequence[Frame]) -> dict[str, np.ndarray]:
    """The named tensors of a weights or pool message."""
    specs = _expect(header, "tensors", list)
    if len(specs) != len(payload):
        raise ProtocolError(f"weights header lists {len(specs)} tensors for {len(payload)} frames")
    tensors: dict[str, np.ndarray] = {}
    total = 0
    for spec, frame in zip(specs, payload, strict=True):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
                and spec[1] in _WEIGHT_DTYPES and isinstance(spec[2], list)
                and all(isinstance(size, int) and size >= 0 for size in spec[2])):
            raise ProtocolError(f"weights: bad tensor description {spec!r}")
        name, dtype, shape = spec
        count = int(np.prod(shape)) if shape else 1
        total += count
        if total * 8 > MAX_WEIGHT_BYTES:
            raise ProtocolError(f"weights exceed {MAX_WEIGHT_BYTES} bytes")
        array = _array(frame, np.dtype(dtype), count, name).reshape(tuple(shape))
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError(f"weights: tensor {name!r} is not finite")
        tensors[name] = array
    return tensors


# --- CurveZMQ keys ----------------------------------------------------------------------
# A key directory made by `keisei-keys DIR` holds the learner's key pair (server.key,
# server.key_secret), one actor key pair (actor.key, actor.key_secret) and authorized/,
# the actor public keys the learner accepts: copy more actors' *.key files there.


@dataclass(frozen=True)
class CurveKeys:
    """Own key pair plus, for an actor, the learner's public key (``server_public``)."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None
    authorized: Path | None = None  # learner only: directory of accepted actor public keys


def generate_keys(directory: str | Path) -> Path:
    """Create a key directory for one learner and its actors; refuses to overwrite.

    :raises FileExistsError: if ``directory`` already holds keys.
    """
    folder = Path(directory)
    if (folder / "server.key").exists():
        raise FileExistsError(f"{folder} already holds keys; remove it or choose another directory")
    (folder / "authorized").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(folder), "server")
    actor_public, _ = zmq.auth.create_certificates(str(folder), "actor")
    (folder / "authorized" / "actor.key").write_bytes(Path(actor_public).read_bytes())
    return folder


def load_keys(directory: str | Path, role: str) -> CurveKeys:
    """The keys ``role`` (``"learner"`` or ``"actor"``) needs from a ``keisei-keys`` directory.

    :raises ProtocolError: naming the missing or unreadable file.
    """
    folder = Path(directory)
    own = folder / ("server.key_secret" if role == "learner" else "actor.key_secret")
    try:
        public, secret = zmq.auth.load_certificate(str(own))
        if role == "learner":
            return CurveKeys(public, cast(bytes, secret), authorized=folder / "authorized")
        server_public, _ = zmq.auth.load_certificate(str(folder / "server.key"))
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"CurveZMQ keys in {folder}: {exc}") from exc
    return CurveKeys(public, cast(bytes, secret), server_public=server_public)


def apply_keys(sock: zmq.Socket[Any], keys: CurveKeys) -> None:
    """Make ``sock`` a CURVE server (learner) or client (actor); call before bind/connect."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    if keys.server_public is None:
        sock.curve_server = True
    else:
        sock.curve_serverkey = keys.server_public


def keys_main(argv: Sequence[str] | None = None) -> int:
    """``keisei-keys DIR``: generate CurveZMQ keys for a learner and its actors."""
    parser = argparse.ArgumentParser(prog="keisei-keys", description=keys_main.__doc__)
    add_version(parser)
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    try:
        folder = generate_keys(args.directory)
    except FileExistsError as exc:
        print(f"keisei-keys: {exc}", file=sys.stderr)
        return 2
    print(f"keys written to {folder}:\n"
          f"  learner: keisei-learner --curve-keys {folder} (uses server.key_secret, authorized/)\n"
          f"  actors:  keisei-actor --curve-keys DIR, where DIR holds actor.key_secret and server.key\n"
          f"  more actors: keisei-keys another_dir, then copy its actor.key into {folder}/authorized/")
    return 0
