"""Game records in bulk: CSA, KIF and USI position lines, from files, folders and archives.

``read_games(paths)`` walks files, folders (recursively, in name order) and ``.zip``,
``.tar``, ``.tar.gz``/``.tgz`` archives of them, and yields each game replayed through
``Game``, so every move is checked against the rules. It reads one archive member or
file at a time, so memory does not grow with the number of records. A record that
cannot be used is skipped, logged with its file, game number and what is wrong (the
bad ply is named), and counted in ``ReadStats``; reading never stops for it.

Formats, by file name:

* ``.csa``: CSA V2 (one file may hold many games separated by a ``/`` line, as
  Floodgate's archives and ``keisei-generate`` write them).
* ``.kif`` (cp932 or UTF-8) and ``.kifu`` (UTF-8): KIF, one game per file, from the
  even start or a named handicap.
* ``.usi`` and ``.sfen``: one game per line, ``[position] startpos|sfen SFEN [moves
  M ...] [result black|white|draw]``. Without ``result`` the result is what the rules
  decide at the last position (mate, sennichite, perpetual check, entering king) and
  otherwise unknown.

Results: a game whose result is unknown (an interrupted CSA ``%CHUDAN`` or KIF 中断, a
USI line without one) still teaches moves; ``RecordedGame.result_known`` is false and
its positions carry no value target. A record whose stated result the rules
contradict (it claims a win by resignation for the side that resigned, a sennichite
without a fourfold repetition, mate where there is none...) is skipped as false.
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keisei.errors import IllegalMoveError, InvalidSfenError, RecordError
from keisei.shogi import Color, Game, Outcome, Termination

logger = logging.getLogger(__name__)

RECORD_FORMATS = {".csa": "csa", ".kif": "kif", ".kifu": "kif", ".usi": "usi", ".sfen": "usi"}
"""File suffix → record format."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_RECORD_BYTES = 64 * 2**20
"""Largest single record file read (a CSA file of many games included)."""
MAX_PLIES = 10_000
"""Longest game accepted from a record."""


@dataclass(frozen=True)
class RecordedGame:
    """One game read from a record, replayed and checked."""

    origin: str
    """``FILE[:MEMBER]#N``: where it came from (N counts games in that file from 1)."""
    game: Game
    result_known: bool


@dataclass
class ReadStats:
    """What reading found: games used, records skipped and why, files by format."""

    games: int = 0
    skipped: int = 0
    files: Counter[str] = field(default_factory=Counter)
    skipped_reasons: Counter[str] = field(default_factory=Counter)
    unknown_results: int = 0
    ignored_files: int = 0

    def skip(self, origin: str, kind: str, reason: str) -> None:
        self.skipped += 1
        self.skipped_reasons[kind] += 1
        logger.warning("skipped %s: %s", origin, reason)

    def summary(self) -> str:
        reasons = ", ".join(f"{kind} {count}" for kind, count in sorted(self.skipped_reasons.items()))
        files = ", ".join(f"{kind} {count}" for kind, count in sorted(self.files.items()))
        return (f"{self.games} games read ({self.unknown_results} without a result), "
                f"{self.skipped} skipped{f' ({reasons})' if reasons else ''}; files: "
                f"{files or 'none'}{f', {self.ignored_files} ignored' if self.ignored_files else ''}")


def record_format(name: str) -> str | None:
    """``csa``, ``kif`` or ``usi`` for a record file name, ``None`` for anything else."""
    return RECORD_FORMATS.get(Path(name).suffix.lower())


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def decode(data: bytes, fmt: str) -> str:
    """Record bytes as text: UTF-8 (with or without BOM), else cp932 (Shift-JIS, what
    most Japanese KIF and older CSA files use)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp932", errors="replace")


def read_games(paths: Iterable[str | Path], stats: ReadStats | None = None) -> Iterator[RecordedGame]:
    """Every usable game in ``paths`` (files, folders, archives), one at a time.

    Skipped records are logged and counted in ``stats``. A path that does not exist
    raises, before anything is read, so a typo is not an empty data set.

    :raises FileNotFoundError: naming the first missing path.
    """
    stats = stats if stats is not None else ReadStats()
    folders = [Path(path) for path in paths]
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such file or folder")
    for folder in folders:
        for name, data in _files_under(folder, stats):
            yield from parse_records(name, data, stats)


def _files_under(path: Path, stats: ReadStats) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each record file at ``path``: the file, a folder's files, or an
    archive's members, in name order."""
    if path.is_dir():
        for child in sorted(item for item in path.rglob("*") if item.is_file()):
            yield from _file(child, stats)
    else:
        yield from _file(path, stats)


def _file(path: Path, stats: ReadStats) -> Iterator[tuple[str, bytes]]:
    name = str(path)
    if is_archive(name):
        yield from _archive_members(path, stats)
        return
    if record_format(name) is None:
        stats.ignored_files += 1
        return
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            stats.skip(name, "file too large", f"{size} bytes; the limit is {MAX_RECORD_BYTES}")
            return
        yield name, path.read_bytes()
    except OSError as exc:
        stats.skip(name, "unreadable file", str(exc))


def _archive_members(path: Path, stats: ReadStats) -> Iterator[tuple[str, bytes]]:
    name = str(path)
    try:
        if name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                for info in sorted(archive.infolist(), key=lambda item: item.filename):
                    if info.is_dir():
                        continue
                    member = f"{name}:{info.filename}"
                    if record_format(info.filename) is None:
                        stats.ignored_files += 1
                    elif info.file_size > MAX_RECORD_BYTES:
                        stats.skip(member, "file too large", f"{info.file_size} bytes")
                    else:
                        yield member, archive.read(info)
            return
        with tarfile.open(path, "r:*") as tar:  # streamed: members in archive order
            for tar_info in tar:
                if not tar_info.isfile():
                    continue
                member = f"{name}:{tar_info.name}"
                if record_format(tar_info.name) is None:
                    stats.ignored_files += 1
                    continue
                if tar_info.size > MAX_RECORD_BYTES:
                    stats.skip(member, "file too large", f"{tar_info.size} bytes")
                    continue
                handle = tar.extractfile(tar_info)
                if handle is not None:
                    yield member, handle.read()
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        stats.skip(name, "unreadable archive", f"{type(exc).__name__}: {exc}")


def parse_records(name: str, data: bytes, stats: ReadStats | None = None) -> Iterator[RecordedGame]:
    """The games in one record file's bytes (its format from ``name``)."""
    stats = stats if stats is not None else ReadStats()
    fmt = record_format(name.rsplit(":", 1)[-1])
    if fmt is None:
        stats.ignored_files += 1
        return
    stats.files[fmt] += 1
    text = decode(data, fmt)
    for number, chunk in enumerate(_split(text, fmt), start=1):
        origin = f"{name}#{number}"
        if not chunk.strip():
            continue
        try:
            game, known = _parse_one(chunk, fmt)
        except (RecordError, IllegalMoveError, InvalidSfenError) as exc:
            stats.skip(origin, _kind(exc), str(exc))
            continue
        if game.ply == 0:
            stats.skip(origin, "no moves", "the record holds no move")
            continue
        stats.games += 1
        stats.unknown_results += not known
        yield RecordedGame(origin, game, known)


def _split(text: str, fmt: str) -> list[str]:
    if fmt == "csa":
        games: list[list[str]] = [[]]
        for line in text.splitlines():
            if line.strip() == "/":
                games.append([])
            else:
                games[-1].append(line)
        return ["\n".join(lines) + "\n" for lines in games]
    if fmt == "usi":
        return [line.split("#", 1)[0] for line in text.splitlines()]
    return [text]


def _kind(exc: RecordError | IllegalMoveError | InvalidSfenError) -> str:
    """A short category of a skip reason, for the counts: the error's own."""
    if isinstance(exc, IllegalMoveError):
        return "illegal move"
    if isinstance(exc, InvalidSfenError):
        return "bad position"
    return exc.kind


def _parse_one(text: str, fmt: str) -> tuple[Game, bool]:
    if fmt == "csa":
        game = Game.from_csa(text)
        known = game.outcome is not None
    elif fmt == "kif":
        game = Game.from_kif(text)
        known = game.outcome is not None
    else:
        game, known = _parse_usi_line(text)
    if game.ply > MAX_PLIES:
        raise RecordError(f"the game is too long ({game.ply} plies; at most {MAX_PLIES})", "too long")
    return game, known


_USI_RESULTS = {"black": Color.BLACK, "white": Color.WHITE, "draw": None}


def _parse_usi_line(line: str) -> tuple[Game, bool]:
    words = line.split()
    claimed: tuple[Color | None] | None = None
    if len(words) >= 2 and words[-2] == "result":
        if words[-1] not in _USI_RESULTS:
            raise RecordError(f"result {words[-1]!r}: expected black, white or draw")
        claimed = (_USI_RESULTS[words[-1]],)
        words = words[:-2]
    moves = len(words) - words.index("moves") - 1 if "moves" in words else 0
    if moves > MAX_PLIES:
        raise RecordError(f"the game is too long ({moves} plies; at most {MAX_PLIES})", "too long")
    try:
        game = Game.from_position(" ".join(words), max_plies=moves + 1)
    except IllegalMoveError as exc:
        raise RecordError(f"illegal {exc}", "illegal move") from exc
    decided = game.outcome
    if claimed is None:
        return game, decided is not None
    winner = claimed[0]
    if decided is not None:
        if decided.winner is not winner:
            what = "a draw" if winner is None else f"a win for {winner}"
            raise RecordError(f"the line claims {what} but the final position is {decided}",
                              "false result")
        return game, True
    # The result was decided off the board (resignation, adjudication): record it so.
    game.end(Outcome(winner, Termination.RESIGNATION if winner is not None
                             else Termination.MAX_PLIES))
    return game, True
