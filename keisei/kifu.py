"""Game records: KIF and CSA written and read, and records in bulk (CSA, KIF and USI
position lines) from files, folders and archives.

``to_kif(game)`` and ``to_csa(game)`` write a game any Shogi GUI opens; ``read_kif`` and
``read_csa`` read one back, replaying every move through ``Game``.

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
USI line without one) still teaches moves; ``KifuGame.result_known`` is false and
its positions carry no value target. A record whose stated result the rules
contradict (it claims a win by resignation for the side that resigned, a sennichite
without a fourfold repetition, mate where there is none...) is skipped as false.
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cshogi
import cshogi.KIF

from keisei.errors import IllegalMoveError, InvalidSfenError, RecordError
from keisei.shogi import (
    DEFAULT_MAX_PLIES,
    STARTING_SFEN,
    Color,
    Game,
    Outcome,
    Termination,
    describe_move,
)

logger = logging.getLogger(__name__)

RECORD_FORMATS = {".csa": "csa", ".kif": "kif", ".kifu": "kif", ".usi": "usi", ".sfen": "usi"}
"""File suffix → record format."""
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_RECORD_BYTES = 64 * 2**20
"""Largest single record file read (a CSA file of many games included)."""
MAX_PLIES = 10_000
"""Longest game accepted from a record."""


@dataclass(frozen=True)
class KifuGame:
    """One game read from a record file (KIF, CSA, USI), replayed and checked; the game a
    process sends over the wire is ``keisei.records.GameRecord``."""

    origin: str
    """``FILE[:MEMBER]#N``: where it came from (N counts games in that file from 1)."""
    game: Game
    result_known: bool


RecordedGame = KifuGame
"""The earlier name of ``KifuGame``, kept for scripts that import it."""


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


def read_games(paths: Iterable[str | Path], stats: ReadStats | None = None) -> Iterator[KifuGame]:
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


def parse_records(name: str, data: bytes, stats: ReadStats | None = None) -> Iterator[KifuGame]:
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
        yield KifuGame(origin, game, known)


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
        game = read_csa(text)
        known = game.outcome is not None
    elif fmt == "kif":
        game = read_kif(text)
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


# --- one record: KIF and CSA, written and read ------------------------------------------
def to_csa(game: Game, names: Sequence[str] = ("Keisei", "Keisei")) -> str:
    """``game`` as CSA text (V2.2); the end line says how it ended (``_csa_ending``)."""
    lines = ["V2.2", f"N+{names[0]}", f"N-{names[1]}"]
    if game.start_sfen == STARTING_SFEN:
        lines += ["PI", "+"]
    else:
        lines.append(cshogi.Board(game.start_sfen).csa_pos().rstrip("\n"))
    for index, move in enumerate(game.moves):
        color = game.color_of_ply(index)
        lines.append(("+" if color is Color.BLACK else "-") + cshogi.move_to_csa(move))
    lines += _csa_ending(game.outcome, game.side_to_move, game.illegal_move)
    return "\n".join(lines) + "\n"

def to_kif(game: Game, names: Sequence[str] = ("Keisei", "Keisei")) -> str:
    """``game`` as KIF text (Japanese notation; save as cp932 ``.kif`` or UTF-8 ``.kifu``)."""
    lines = ["# KIF形式棋譜ファイル Generated by Keisei"]
    if game.start_sfen == STARTING_SFEN:
        lines.append("手合割：平手")
    else:
        lines.append(cshogi.KIF.board_to_bod(cshogi.Board(game.start_sfen)).rstrip("\n"))
    lines += [f"先手：{names[0]}", f"後手：{names[1]}", "手数----指手---------消費時間--"]
    previous = None
    for number, move in enumerate(game.moves, start=1):
        lines.append(f"{number:>4} {cshogi.KIF.move_to_kif(move, previous)}   ( 0:00/00:00:00)")
        previous = move
    lines += _kif_ending(game.outcome, game.side_to_move, game.ply)
    return "\n".join(lines) + "\n"

def write_game_files(stem: Path, kif: str, csa: str) -> tuple[Path, Path]:
    """A game's record beside ``stem``: ``.kif`` in cp932 (what Japanese GUIs read; a
    character it lacks, in a player's name say, becomes ``?``) and ``.csa`` in UTF-8.
    ``kif`` and ``csa`` are ``to_kif``'s and ``to_csa``'s text. Returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    kif_path, csa_path = stem.with_suffix(".kif"), stem.with_suffix(".csa")
    kif_path.write_text(kif, encoding="cp932", errors="replace")
    csa_path.write_text(csa, encoding="utf-8")
    return kif_path, csa_path


def read_csa(text: str, max_plies: int | None = None) -> Game:
    """Read the first game of a CSA record and replay it with full validation.

    The result comes from the rules where they decide it (mate, sennichite, entering
    king, the ply limit) and otherwise from the record's end line (resignation,
    illegal move). ``max_plies`` defaults to what the record needs.

    :raises RecordError: if the text does not parse or a move is illegal.
    """
    try:
        records = cshogi.Parser.parse_str(text)
    except Exception as exc:  # cshogi raises bare exceptions from C++
        raise RecordError(f"CSA text does not parse: {exc}") from exc
    if not records:
        raise RecordError("CSA text holds no game")
    record = records[0]
    return _replay(record.sfen, [int(m) for m in record.moves], str(record.endgame),
                       int(record.win), max_plies)

def read_kif(text: str, max_plies: int | None = None) -> Game:
    """Read a KIF record (even or named-handicap start) and replay it with validation.

    :raises RecordError: if it does not parse, starts from a board diagram (use CSA
        for those), or holds an illegal move.
    """
    if "\n|" in text or text.startswith("|"):
        raise RecordError("KIF with a board diagram (BOD) start is not supported; use CSA")
    try:
        record = cshogi.KIF.Parser.parse_str(text)
    except Exception as exc:
        raise RecordError(f"KIF text does not parse: {exc}") from exc
    win = -1 if record.win is None else int(record.win)
    endgame = str(record.endgame)
    if "手で持将棋" in text:  # cshogi's reader calls every draw sennichite
        endgame = "%MAX_MOVES"
    return _replay(record.sfen, [int(m) for m in record.moves], endgame, win, max_plies)

def _replay(sfen: str, moves: list[int], endgame: str, win: int,
            max_plies: int | None) -> Game:
    if max_plies is None:
        # One more than the record's moves, so a long decided game is not cut to a draw.
        max_plies = (len(moves) if endgame == "%MAX_MOVES" and moves
                     else max(DEFAULT_MAX_PLIES, len(moves) + 1))
    try:
        # No automatic declaration on replay: a player may play on from a position where
        # declaring would win; a %KACHI end is checked below instead.
        game = Game(sfen, max_plies=max_plies, entering_king=False)
    except InvalidSfenError as exc:
        raise RecordError(f"record's start position is invalid: {exc}", "bad position") from exc
    for number, move in enumerate(moves, start=1):
        if game.is_over:
            raise RecordError(f"move {number} follows the end of the game ({game.outcome})",
                              "illegal move")
        if not game.is_legal(move):
            raise RecordError(f"move {number} ({describe_move(move)}) is illegal in {game.sfen()}",
                              "illegal move")
        game.push(move)
    game.entering_king = True  # for play from here on, as every Game
    known, claimed = _claimed_result(endgame, win, game.side_to_move)
    decided = game.outcome
    after = f"after move {len(moves)}" if moves else "at the start"
    if decided is not None:
        if known and claimed is not decided.winner:
            raise RecordError(f"the record claims {_result_words(claimed)} ({endgame}) but "
                              f"the position {after} is {decided}", "false result")
        return game
    if endgame == "%KACHI" and game.board.is_nyugyoku():
        game.end(Outcome(game.side_to_move, Termination.ENTERING_KING))
        return game
    if endgame in _RULE_ENDINGS:
        raise RecordError(f"the record claims {_RULE_ENDINGS[endgame]} ({endgame}) but the "
                          f"position {after} is not one", "false result")
    recorded = _recorded_outcome(endgame, win, game.side_to_move)
    if recorded is not None:
        game.end(recorded)
    return game


def _csa_ending(outcome: Outcome | None, to_move: Color, illegal: int | None) -> list[str]:
    """CSA end lines. Losses by rule (perpetual check) are written as ILLEGAL_ACTION of the
    loser, mate as %TORYO (cshogi reads %TSUMI as a draw), so readers recover the winner."""
    if outcome is None:
        return ["%CHUDAN"]
    reason = outcome.reason
    if reason in (Termination.CHECKMATE, Termination.NO_LEGAL_MOVES, Termination.RESIGNATION):
        return ["%TORYO"]
    if reason is Termination.REPETITION:
        return ["%SENNICHITE"]
    if reason is Termination.MAX_PLIES:
        return ["%MAX_MOVES"]
    if reason is Termination.ENTERING_KING:
        return ["%KACHI"]
    if reason is Termination.FORFEIT:
        return ["'forfeit: the engine died, stalled or did not answer with a move", "%TIME_UP"]
    if reason is Termination.ILLEGAL_MOVE:
        note = describe_move(illegal) if illegal is not None else "?"
        return [f"'illegal move {note}", "%ILLEGAL_MOVE"]
    loser = outcome.winner.opponent if outcome.winner else to_move
    return ["'perpetual check", "%+ILLEGAL_ACTION" if loser is Color.BLACK else "%-ILLEGAL_ACTION"]


def _kif_ending(outcome: Outcome | None, to_move: Color, plies: int) -> list[str]:
    """KIF special move and result line, in the forms cshogi's KIF reader understands."""
    number = plies + 1
    side = {Color.BLACK: "先手", Color.WHITE: "後手"}
    if outcome is None:
        return [f"{number:>4} 中断", f"まで{plies}手で中断"]
    reason = outcome.reason
    if outcome.winner is None:
        word = "千日手" if reason is Termination.REPETITION else "持将棋"
        return [f"{number:>4} {word}", f"まで{plies}手で{word}"]
    winner = side[outcome.winner]
    if reason is Termination.CHECKMATE:
        return [f"{number:>4} 詰み", f"まで{plies}手で{winner}の勝ち"]
    if reason in (Termination.RESIGNATION, Termination.NO_LEGAL_MOVES):
        return [f"{number:>4} 投了", f"まで{plies}手で{winner}の勝ち"]
    if reason is Termination.ENTERING_KING:
        return [f"まで{plies}手で{winner}の入玉勝ち"]
    if reason is Termination.FORFEIT:
        return [f"{number:>4} 切れ負け", f"まで{plies}手で{winner}の勝ち"]
    # Fouls: illegal move or perpetual check. The special move is from the side to move's view.
    if outcome.winner is to_move:
        return [f"{number:>4} 反則勝ち", f"まで{plies}手で{winner}の反則勝ち"]
    return [f"{number:>4} 反則負け", f"まで{plies}手で{side[to_move]}の反則負け"]


_RULE_ENDINGS = {"%SENNICHITE": "a fourfold repetition", "%KACHI": "a valid entering-king "
                 "declaration (27-point rule)", "%TSUMI": "checkmate"}
"""Endings the rules check on replay: a record that claims one the rules do not see is false."""


def _claimed_result(endgame: str, win: int, to_move: Color) -> tuple[bool, Color | None]:
    """(whether the record states a result, its winner or None for a draw).

    :raises RecordError: if the end line and the stated winner contradict each other (a
        KIF whose last move is a resignation by the side that, its result line says, won).
    """
    stated = {cshogi.BLACK_WIN: Color.BLACK, cshogi.WHITE_WIN: Color.WHITE}.get(win)
    implied: Color | None
    if endgame in ("%TORYO", "%TIME_UP", "%TSUMI"):
        implied = to_move.opponent
    elif endgame == "%KACHI":
        implied = to_move
    elif endgame in ("%SENNICHITE", "%MAX_MOVES", "%JISHOGI", "%HIKIWAKE"):
        return True, None
    elif endgame in ("%ILLEGAL_MOVE", "%+ILLEGAL_ACTION", "%-ILLEGAL_ACTION"):
        return stated is not None, stated
    else:
        return False, None
    if stated is not None and stated is not implied:
        raise RecordError(f"the record says {_result_words(stated)} but its end ({endgame} with "
                          f"{to_move} to move) means {_result_words(implied)}", "false result")
    return True, implied


def _result_words(winner: Color | None) -> str:
    return "a draw" if winner is None else f"a win for {winner}"


def _recorded_outcome(endgame: str, win: int, to_move: Color) -> Outcome | None:
    """The outcome a record states where the rules did not decide it on replay."""
    winner = {cshogi.BLACK_WIN: Color.BLACK, cshogi.WHITE_WIN: Color.WHITE}.get(win)
    if endgame in ("%TORYO", "%TIME_UP"):
        return Outcome(to_move.opponent, Termination.RESIGNATION)
    if endgame in ("%ILLEGAL_MOVE", "%+ILLEGAL_ACTION", "%-ILLEGAL_ACTION") and winner is not None:
        return Outcome(winner, Termination.ILLEGAL_MOVE)
    if endgame == "%SENNICHITE":
        return Outcome(None, Termination.REPETITION)
    if endgame in ("%MAX_MOVES", "%JISHOGI"):
        return Outcome(None, Termination.MAX_PLIES)
    if endgame == "%KACHI" and winner is not None:
        return Outcome(winner, Termination.ENTERING_KING)
    return None
