"""Supervised training data: positions from game records, in shards on disk.

A *position sample* is 36 bytes (``POSITION_DTYPE``): the position before a recorded
move as Apery's 32-byte Huffman code (``cshogi.Board.to_hcp``), the move as an action
index from the mover's view, how often the position occurred before in its game (the
repetition planes), and the game's result from the mover's view (1 win, 0 draw, -1
loss, ``RESULT_UNKNOWN``). ``decode_samples`` turns samples into exactly what the
network and the PPO learner see: observation planes, legal-move mask, action, result.

``prepare_dataset`` streams records (``keisei.kifu.read_games``) into numbered
``.npy`` shards of ``shard_size`` samples, one set for training and one held out for
validation. The split is by game (a hash of the record's name from the folder or file given
on), so no game has positions on both sides, and neither adding records nor moving
the folder moves a game between them.

Duplicates are handled deliberately: the same (position, move) pair is kept at most
``max_duplicates`` times. Every game repeats its opening, and without a cap the first
moves of a few openings would dominate the loss; a small cap still lets a position's
moves keep their relative frequencies across games. The counts live in a fixed
table of 2^24 one-byte counters indexed by a 64-bit hash of (Zobrist key, move), so
memory stays at 16 MiB however many records stream through; a collision can at
worst drop a rare pair early (at a million distinct pairs, a pair shares its counter
with about 6% odds, and then only past the cap).

``ShardSet.batches`` reads shards in a shuffled order, ``chunk_shards`` at a time, and
shuffles within that chunk: memory is bounded by the chunk, not the data set.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cshogi
import numpy as np

from keisei.encoding import (
    NUM_ACTIONS,
    OBSERVATION_SHAPE,
    fill_observation,
    legal_action_mask,
    move_to_action,
)
from keisei.errors import KeiseiError
from keisei.files import write_atomically, write_json_atomically
from keisei.kifu import KifuGame, ReadStats, parse_records, read_games
from keisei.shogi import Game

logger = logging.getLogger(__name__)

POSITION_DTYPE = np.dtype([("hcp", "u1", (32,)), ("action", "<i2"), ("repetitions", "u1"),
                           ("result", "i1")])
RESULT_UNKNOWN = -128
SPLITS = ("train", "val")
METADATA = "dataset.json"


class DatasetError(KeiseiError, ValueError):
    """A data set folder is missing, empty or damaged."""


def game_positions(recorded: KifuGame) -> tuple[np.ndarray, np.ndarray]:
    """One sample per move of the game (the position before it, the move, the result),
    and the Zobrist key of each of those positions (for ``DuplicateFilter``), from one
    replay."""
    game = recorded.game
    moves = game.moves
    samples = np.zeros(len(moves), dtype=POSITION_DTYPE)
    keys = np.zeros(len(moves), dtype=np.uint64)
    outcome = game.outcome
    winner = outcome.winner if outcome is not None else None
    replay = Game(game.start_sfen, max_plies=len(moves) + 1)
    hcp = np.empty(32, dtype=np.uint8)
    for index, move in enumerate(moves):
        board = replay.board
        board.to_hcp(hcp)
        samples["hcp"][index] = hcp
        samples["action"][index] = move_to_action(board, move)
        samples["repetitions"][index] = min(replay.repetitions, 3)
        keys[index] = board.zobrist_hash()
        if not recorded.result_known:
            samples["result"][index] = RESULT_UNKNOWN
        elif winner is not None:
            samples["result"][index] = 1 if winner is replay.side_to_move else -1
        replay.push(move)
    return samples, keys


class DuplicateFilter:
    """Keeps a (position, move) pair at most ``max_count`` times (0: keep all)."""

    def __init__(self, max_count: int, bits: int = 24) -> None:
        self.max_count = max_count
        self.mask = (1 << bits) - 1
        self.counts = np.zeros(1 << bits if max_count else 1, dtype=np.uint8)
        self.dropped = 0

    def keep(self, samples: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The rows of ``samples`` to keep; ``keys`` are their positions' Zobrist keys."""
        if not self.max_count:
            return samples
        mixed = keys.astype(np.uint64) ^ (samples["action"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        mixed ^= mixed >> np.uint64(29)
        slots = (mixed & np.uint64(self.mask)).astype(np.int64)
        keep = np.zeros(len(samples), dtype=bool)
        for row, slot in enumerate(slots):  # in order: a pair twice in one game counts twice
            if self.counts[slot] < self.max_count:
                self.counts[slot] += 1
                keep[row] = True
        self.dropped += int((~keep).sum())
        kept: np.ndarray = samples[keep]
        return kept


def split_of(origin: str, val_fraction: float) -> str:
    """``val`` for about ``val_fraction`` of games, fixed by where each game came from.

    A cryptographic digest, not a CRC: a CRC is linear, so names that differ only in a
    game number (``games.csa#1``, ``#2``, ...) can all land on one side.
    """
    digest = hashlib.blake2b(origin.encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") % 10_000 < val_fraction * 10_000 else "train"


def split_key(origin: str, source: str) -> str:
    """The part of ``origin`` that decides its split: from the name of the file or folder
    given (``source``) on, so moving a record folder does not change the split."""
    base = str(Path(source))
    if origin.startswith(base):
        return Path(base).name + origin[len(base):]
    return origin


class ShardWriter:
    """Appends samples and writes them as ``PREFIX-NNNNN.npy`` shards of ``shard_size``."""

    def __init__(self, directory: Path, prefix: str, shard_size: int) -> None:
        self.directory = directory
        self.prefix = prefix
        self.shard_size = shard_size
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.shards = 0
        self.rows = 0

    def add(self, samples: np.ndarray) -> None:
        self.pending.append(samples)
        self.pending_rows += len(samples)
        while self.pending_rows >= self.shard_size:
            block = np.concatenate(self.pending)
            self._write(block[:self.shard_size])
            rest = block[self.shard_size:]
            self.pending, self.pending_rows = [rest], len(rest)

    def close(self) -> None:
        if self.pending_rows:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_rows = [], 0

    def _write(self, block: np.ndarray) -> None:
        write_atomically(self.directory / f"{self.prefix}-{self.shards:05d}.npy",
                         lambda stream: np.save(stream, block, allow_pickle=False))
        self.shards += 1
        self.rows += len(block)


@dataclass
class DatasetSummary:
    """What ``prepare_dataset`` wrote (``dataset.json``)."""

    games: int
    games_val: int
    positions_train: int
    positions_val: int
    duplicates_dropped: int
    skipped: int
    skipped_reasons: dict[str, int]
    unknown_results: int
    val_fraction: float
    max_duplicates: int
    sources: list[str]
    seconds: float

    def line(self) -> str:
        return (f"{self.games} games ({self.games_val} held out), {self.positions_train} training "
                f"and {self.positions_val} validation positions, {self.duplicates_dropped} "
                f"duplicates dropped, {self.skipped} records skipped, in {self.seconds:.0f} s")


def prepare_dataset(paths: Iterable[str | Path], directory: str | Path, *, val_fraction: float,
                    max_duplicates: int, shard_size: int = 65_536,
                    progress: float = 10.0) -> DatasetSummary:
    """Read every record under ``paths`` into shards under ``directory`` and write
    ``dataset.json`` last; returns its contents. Shards left in ``directory`` by a
    preparation that did not finish (no ``dataset.json``) are removed first.

    :raises FileNotFoundError: for a path that does not exist.
    :raises DatasetError: if no usable position was found.
    """
    sources = [str(path) for path in paths]
    for source in sources:
        if not Path(source).exists():
            raise FileNotFoundError(f"{source}: no such file or folder")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stale = [path for split in SPLITS for path in directory.glob(f"{split}-*.npy")]
    if stale:  # shards without dataset.json: a preparation that did not finish
        logger.info("%s: removing %d shard(s) of an unfinished preparation", directory, len(stale))
        for path in stale:
            path.unlink()
    stats = ReadStats()
    writers = {split: ShardWriter(directory, split, shard_size) for split in SPLITS}
    duplicates = DuplicateFilter(max_duplicates)
    games_val = 0
    started = last = time.monotonic()
    recorded_games = ((source, recorded) for source in sources
                      for recorded in read_games([source], stats))
    for source, recorded in recorded_games:
        split = split_of(split_key(recorded.origin, source), val_fraction)
        games_val += split == "val"
        samples = duplicates.keep(*game_positions(recorded))
        writers[split].add(samples)
        now = time.monotonic()
        if now - last >= progress:
            logger.info("reading records: %d games, %d positions so far", stats.games,
                        writers["train"].rows + writers["train"].pending_rows)
            last = now
    for writer in writers.values():
        writer.close()
    summary = DatasetSummary(stats.games, games_val, writers["train"].rows, writers["val"].rows,
                             duplicates.dropped, stats.skipped, dict(stats.skipped_reasons),
                             stats.unknown_results, val_fraction, max_duplicates, sources,
                             time.monotonic() - started)
    logger.info("records: %s", stats.summary())
    if not summary.positions_train:
        raise DatasetError(f"no training position in {', '.join(sources)}: {stats.summary()}")
    write_json_atomically(directory / METADATA, asdict(summary))
    return summary


def read_summary(directory: str | Path) -> DatasetSummary:
    """The ``dataset.json`` of a prepared data set.

    :raises DatasetError: if it is missing or damaged.
    """
    path = Path(directory) / METADATA
    try:
        return DatasetSummary(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path}: not a prepared data set ({exc})") from exc


class ShardSet:
    """The shards of one split, read lazily."""

    def __init__(self, directory: str | Path, split: str) -> None:
        self.paths = sorted(Path(directory).glob(f"{split}-*.npy"))
        self.sizes = []
        for path in self.paths:
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{path}: not a data shard ({exc})") from exc
            if array.dtype != POSITION_DTYPE or array.ndim != 1:
                raise DatasetError(f"{path}: holds {array.dtype} {array.shape}, not position samples")
            self.sizes.append(len(array))

    def __len__(self) -> int:
        return sum(self.sizes)

    def batches(self, batch_size: int, rng: np.random.Generator | None,
                chunk_shards: int = 8) -> Iterator[np.ndarray]:
        """Batches of samples. With ``rng``: shards in a random order, ``chunk_shards`` at a
        time shuffled together, full batches only. Without: every sample, in order."""
        order = list(range(len(self.paths)))
        if rng is not None:
            rng.shuffle(order)
        carry = np.zeros(0, dtype=POSITION_DTYPE)
        for start in range(0, len(order), chunk_shards):
            parts = [carry] + [np.load(self.paths[index], allow_pickle=False)
                               for index in order[start:start + chunk_shards]]
            chunk = np.concatenate(parts)
            if rng is not None:
                chunk = chunk[rng.permutation(len(chunk))]
            full = len(chunk) - len(chunk) % batch_size
            for row in range(0, full, batch_size):
                yield chunk[row:row + batch_size]
            carry = chunk[full:]
        if rng is None and len(carry):
            yield carry


class EndlessBatches:
    """Shuffled batches of a prepared data set's training positions without end: one
    shuffled pass after another (``ShardSet.batches``). Its ``state_dict`` (the generator's
    state where the pass began, and the batches taken of it) lets a resumed run go on
    where the stream stood instead of taking the same positions again."""

    def __init__(self, shards: ShardSet, batch_size: int, rng: np.random.Generator) -> None:
        self.shards, self.batch_size, self.rng = shards, batch_size, rng
        self._pass: Iterator[np.ndarray] | None = None
        self._pass_state: Mapping[str, Any] = rng.bit_generator.state
        self._taken = 0

    def __iter__(self) -> EndlessBatches:
        return self

    def __next__(self) -> np.ndarray:
        while True:
            if self._pass is None:
                self._pass_state, self._taken = self.rng.bit_generator.state, 0
                self._pass = self.shards.batches(self.batch_size, self.rng)
            batch = next(self._pass, None)
            if batch is not None:
                self._taken += 1
                return batch
            self._pass = None  # the end of a pass: the next one, shuffled anew

    def reseed(self, rng: np.random.Generator) -> None:
        """A fresh pass in ``rng``'s order from the next batch on."""
        self.rng, self._pass = rng, None

    def state_dict(self) -> dict[str, Any]:
        if self._pass is None:
            return {"rng": self.rng.bit_generator.state, "taken": 0, "batch_size": self.batch_size}
        return {"rng": self._pass_state, "taken": self._taken, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on where ``state`` left the stream: its pass replayed, less the batches taken
        (a data set that has changed since may end that pass early). A state taken with
        another batch size leaves a fresh pass from that state's generator instead."""
        self.rng.bit_generator.state = state["rng"]
        self._pass = None
        if int(state.get("batch_size", -1)) == self.batch_size:
            self._pass_state, self._taken = state["rng"], int(state["taken"])
            self._pass = itertools.islice(self.shards.batches(self.batch_size, self.rng),
                                          self._taken, None)


def endless_batches(directory: str | Path, batch_size: int,
                    rng: np.random.Generator) -> EndlessBatches:
    """The training positions of the data set in ``directory`` as an ``EndlessBatches``
    stream.

    :raises DatasetError: if ``directory`` is not a prepared data set, or holds fewer
        training positions than one batch.
    """
    read_summary(directory)
    shards = ShardSet(directory, "train")
    if len(shards) < batch_size:
        raise DatasetError(f"{directory}: {len(shards)} training positions, fewer than a batch "
                           f"of {batch_size}")
    return EndlessBatches(shards, batch_size, rng)


GENERATOR_STARTED = "generating with"
"""The start of the line ``keisei-generate`` prints once SIGINT or SIGTERM stops it cleanly
(finished games and ``summary.json`` kept); whoever started it waits for the line before
stopping it, so that a stop while it is still importing leaves no traceback."""

POLL_BYTES = 1 << 20
"""``RecordFolder.poll`` reads at most about this much of each file: some 90 000
positions, about a second's parsing on one core, where one Fairy-Stockfish depth-4 worker
writes about 4 KB a second."""


class RecordFolder:
    """The engine games a record folder gains while a run trains (``keisei-generate
    --output DIR`` writing into it beside the learner), as position samples in memory.

    ``poll`` reads each ``*.csa`` file from where the last poll stopped and takes the
    games finished since: a game is finished once the ``/`` line of the next one follows
    it, or once its last line is a CSA ending (``%TORYO`` ...), which ``keisei-generate``
    writes with each game. A game half written stays for the next poll. Games are split
    between training and held out exactly as ``keisei-pretrain`` splits the same folder
    (``split_of``), so a held-out game stays held out, and only the training ones are
    kept, with the same duplicate cap. 36 bytes a position: an hour of one engine worker
    is about 15 MB.
    """

    def __init__(self, directory: str | Path, *, val_fraction: float, max_duplicates: int) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DatasetError(f"{directory}: no such folder (keisei-generate --output makes it; "
                               "mkdir it to start the learner first)")
        self.val_fraction = val_fraction
        self.duplicates = DuplicateFilter(max_duplicates)
        self.stats = ReadStats()
        self.consumed: dict[str, tuple[int, int]] = {}  # file name: bytes read, games in them
        self.samples = np.zeros(0, dtype=POSITION_DTYPE)
        self.games = 0  # training games taken
        self.held_out = 0

    def __len__(self) -> int:
        return len(self.samples)

    def poll(self, limit: int = POLL_BYTES) -> int:
        """Read the games finished since the last poll, at most about ``limit`` bytes of
        each file (the rest waits for the next poll, so that a generator faster than the
        reading never stalls the learner); returns the training positions they added."""
        parts = []
        for path in sorted(self.directory.glob("*.csa")):
            offset, number = self.consumed.get(path.name, (0, 0))
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read(limit)
                    chunks, used = finished_games(data)
                    while not chunks and len(data) >= limit:  # one game longer than the limit
                        more = handle.read(limit)
                        if not more:
                            break
                        data += more
                        chunks, used = finished_games(data)
            except OSError as exc:  # removed or unreadable meanwhile: the next poll retries
                logger.warning("%s: %s", path, exc)
                continue
            for chunk in chunks:
                number += 1
                origin = f"{self.directory.name}/{path.name}#{number}"
                for recorded in parse_records(path.name, chunk, self.stats):
                    if split_of(origin, self.val_fraction) == "val":
                        self.held_out += 1
                        continue
                    self.games += 1
                    parts.append(self.duplicates.keep(*game_positions(recorded)))
            self.consumed[path.name] = (offset + used, number)
        added = sum(len(part) for part in parts)
        if added:
            self.samples = np.concatenate([self.samples, *parts])
        return added

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` of the positions read so far, drawn uniformly with replacement."""
        picked: np.ndarray = self.samples[rng.integers(0, len(self.samples), count)]
        return picked


SEPARATOR = re.compile(rb"/\r?\n")  # CSA's line between games, LF or CRLF
NEXT_GAME = re.compile(rb"\n/\r?\n")  # a line end, then that line


def finished_games(data: bytes) -> tuple[list[bytes], int]:
    """The whole games at the start of a CSA file's unread bytes ``data`` (the ``/``
    separator lines left out), and how many bytes they take, separators included. Lines
    may end in LF or CRLF."""
    games = []
    position = 0
    while position < len(data):
        separator = SEPARATOR.match(data, position)  # the "/" line before a game
        if separator is not None:
            position = separator.end()
            continue
        found = NEXT_GAME.search(data, position)
        if found is not None:
            games.append(data[position:found.start() + 1])  # up to its line end
            position = found.start() + 1
            continue
        rest = data[position:]
        last_line = rest.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
        if rest.endswith(b"\n") and last_line.startswith(b"%"):
            games.append(rest)
            position = len(data)
        break
    return games, position


@dataclass
class DecodedBatch:
    observations: np.ndarray
    """float32 ``(N, *OBSERVATION_SHAPE)``."""
    legal_masks: np.ndarray
    """bool ``(N, NUM_ACTIONS)``."""
    actions: np.ndarray
    """int64 ``(N,)``."""
    results: np.ndarray
    """float32 ``(N,)`` from the mover's view; 0 where unknown."""
    result_known: np.ndarray
    """bool ``(N,)``."""


def decode_samples(samples: np.ndarray) -> DecodedBatch:
    """What the network sees and is taught for each sample.

    :raises DatasetError: if a sample's move is not legal in its position (a damaged shard).
    """
    count = len(samples)
    observations = np.empty((count, *OBSERVATION_SHAPE), dtype=np.float32)
    masks = np.zeros((count, NUM_ACTIONS), dtype=bool)
    board = cshogi.Board()
    hcp = np.empty(32, dtype=np.uint8)
    for index in range(count):
        hcp[:] = samples["hcp"][index]
        board.set_hcp(hcp)
        fill_observation(observations, index, board, int(samples["repetitions"][index]))
        masks[index] = legal_action_mask(board)
    actions = samples["action"].astype(np.int64)
    if not masks[np.arange(count), actions].all():
        raise DatasetError("a sample's move is not legal in its position: the shard is damaged")
    results = samples["result"].astype(np.float32)
    known = samples["result"] != RESULT_UNKNOWN
    results[~known] = 0.0
    return DecodedBatch(observations, masks, actions, results, known)
