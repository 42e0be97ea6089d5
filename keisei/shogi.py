"""The game of Shogi: a thin, validating layer over cshogi.

cshogi (a C++ engine, GPL-3) generates moves and is exact on every published
perft count. It leaves to its caller what a referee must do, and ``Game`` does it:

* ``cshogi.Board.push`` does not validate: an illegal int corrupts the position.
  ``Game.push`` only plays moves from the position's legal-move list; anything
  else ends the game as a loss by ``illegal_move`` for the side that tried it.
  (``Board.is_legal`` is no validator: it accepts moves whose piece bits are wrong.)
* ``Board.is_draw`` fires at the first repetition. Sennichite needs the fourth
  occurrence of the same position (board, hands and side to move), so ``Game``
  counts occurrences by Zobrist key and ends the game at four; only then does it
  ask ``is_draw`` whether one side gave check on every move of the cycle, which
  makes it lose (perpetual check) instead of a draw.
* ``Board.is_game_over`` only means "the side to move has no legal move"; in
  Shogi that is a loss, by checkmate (or, if not in check, by having no move).
* An entering-king declaration (nyugyoku, 27-point rule) is only reported by
  cshogi. ``Game`` applies it: a side to move that may legally declare does so
  and wins, unless ``entering_king=False``.
* ``max_plies`` moves without a result is a draw.

Records: ``to_kif``/``to_csa`` write games any Shogi GUI opens; ``from_csa``,
``from_kif`` and ``from_position`` (USI ``startpos moves ...``) read them back.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import cshogi
import cshogi.KIF

from keisei.errors import GameOverError, IllegalMoveError, InvalidSfenError, RecordError

logger = logging.getLogger(__name__)

STARTING_SFEN = "lnsgkgsnl/1r5b1/ppppppppp/9/9/9/PPPPPPPPP/1B5R1/LNSGKGSNL b - 1"
DEFAULT_MAX_PLIES = 512
# The fourth occurrence of a position ends the game (sennichite).
REPETITIONS_TO_END = 4


class Color(StrEnum):
    """A side. Compares equal to the strings ``"black"`` (sente, moves first) and ``"white"``."""

    BLACK = "black"
    WHITE = "white"

    @property
    def number(self) -> int:
        """cshogi's colour number: ``cshogi.BLACK == 0``, ``cshogi.WHITE == 1``."""
        return 0 if self is Color.BLACK else 1

    @property
    def opponent(self) -> Color:
        return Color.WHITE if self is Color.BLACK else Color.BLACK

    @staticmethod
    def from_number(number: int) -> Color:
        return Color.BLACK if number == 0 else Color.WHITE


class Termination(StrEnum):
    """Why a game ended."""

    CHECKMATE = "checkmate"
    """The side to move is in check and has no legal move; it loses."""
    NO_LEGAL_MOVES = "no_legal_moves"
    """The side to move is not in check but has no legal move; in Shogi that also loses."""
    REPETITION = "repetition"
    """The same position (board, hands, side to move) occurred four times: sennichite, a draw."""
    PERPETUAL_CHECK = "perpetual_check"
    """Sennichite in which one side checked on every move of the cycle: that side loses."""
    MAX_PLIES = "max_plies"
    """The game reached its ply limit: a draw."""
    ENTERING_KING = "entering_king"
    """The side to move met the 27-point entering-king conditions and declared: it wins."""
    ILLEGAL_MOVE = "illegal_move"
    """The side to move tried an illegal move: it loses."""
    RESIGNATION = "resignation"
    """The side to move resigned (from a record, an engine, or ``Game.resign``)."""
    FORFEIT = "forfeit"
    """The side to move forfeited (``Game.forfeit``): its engine died, stalled past its time
    limit, or answered with something that is not a move. Records write it as a loss on time
    (CSA ``%TIME_UP``, KIF 切れ負け), which readers take as a resignation."""


_DRAW_REASONS = frozenset({Termination.REPETITION, Termination.MAX_PLIES})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a game ended: ``winner`` is ``"black"``, ``"white"``, or ``None`` for a draw."""

    winner: Color | None
    reason: Termination

    @property
    def is_draw(self) -> bool:
        return self.winner is None

    def __str__(self) -> str:
        if self.winner is None:
            return f"draw by {self.reason}"
        return f"{self.winner} wins by {self.reason}"


def normalize_sfen(sfen: str) -> str:
    """Check an SFEN and return it in canonical form (``"startpos"`` is accepted too).

    Rejects, naming the bad part: a wrong number of fields or ranks, a rank that does not
    cover nine squares, unknown pieces, ``+`` before a piece that cannot promote, anything
    but one king per side, more pieces of a kind than the set holds, two unpromoted pawns
    of one side on a file (nifu), pieces that could never move again, and a position where
    the side not to move is in check.

    :raises InvalidSfenError: with the reason.
    """
    fields = sfen.split()
    if fields[:1] == ["sfen"]:
        fields = fields[1:]
    if fields == ["startpos"]:
        return STARTING_SFEN
    if len(fields) == 3:
        fields.append("1")
    if len(fields) != 4:
        raise InvalidSfenError(
            f"SFEN {sfen!r} has {len(fields)} fields; expected 4 (board, side, hand, move number)"
        )
    board_text, side, hand_text, number = fields
    counts = _check_board_field(board_text)
    if side not in ("b", "w"):
        raise InvalidSfenError(f"side to move {side!r} in SFEN {sfen!r} must be 'b' or 'w'")
    _check_hand_field(hand_text, counts)
    if not number.isdigit() or int(number) < 1:
        raise InvalidSfenError(f"move number {number!r} in SFEN {sfen!r} must be a positive integer")
    canonical = f"{board_text} {side} {hand_text} {number}"
    try:
        board = cshogi.Board(canonical)
    except RuntimeError as exc:
        raise InvalidSfenError(f"cshogi rejected SFEN {sfen!r}: {exc}") from exc
    other = "w" if side == "b" else "b"
    if cshogi.Board(f"{board_text} {other} {hand_text} 1").is_check():
        raise InvalidSfenError(f"in SFEN {sfen!r} the side not to move is in check")
    return str(board.sfen())


_PIECES = "plnsgbrk"
_PROMOTABLE = frozenset("plnsbrPLNSBR")
_SET_SIZE = {"p": 18, "l": 4, "n": 4, "s": 4, "g": 4, "b": 2, "r": 2, "k": 2}


def _check_board_field(board_text: str) -> dict[str, int]:
    """Validate the board field of an SFEN; return how many of each piece kind it holds."""
    ranks = board_text.split("/")
    if len(ranks) != 9:
        raise InvalidSfenError(f"SFEN board {board_text!r} has {len(ranks)} ranks; expected 9")
    counts = dict.fromkeys(_PIECES + _PIECES.upper(), 0)
    pawn_files: set[tuple[str, int]] = set()
    for rank_index, rank in enumerate(ranks):
        rank_name = "abcdefghi"[rank_index]
        file_number = 9  # SFEN ranks are written from file 9 to file 1
        promoted = False
        for char in rank:
            if char == "+":
                promoted = True
                continue
            if char.isdigit() and not promoted and char != "0":
                file_number -= int(char)
                continue
            if char.lower() not in _PIECES:
                raise InvalidSfenError(f"unknown piece {char!r} in rank {rank_name} {rank!r}")
            if promoted and char not in _PROMOTABLE:
                raise InvalidSfenError(f"'+{char}' in rank {rank_name} {rank!r}: it cannot promote")
            counts[char] += 1
            if not promoted:
                _check_piece_can_move(char, rank_index, rank_name)
                if char in "pP":
                    if (char, file_number) in pawn_files:
                        raise InvalidSfenError(f"two unpromoted '{char}' on file {file_number} (nifu)")
                    pawn_files.add((char, file_number))
            promoted = False
            file_number -= 1
        if promoted or file_number != 0:
            raise InvalidSfenError(
                f"rank {rank_name} {rank!r} covers {9 - file_number} squares; expected 9"
            )
    if counts["K"] != 1 or counts["k"] != 1:
        raise InvalidSfenError(
            f"SFEN board {board_text!r} has {counts['K']} black and {counts['k']} white kings; "
            "expected one each"
        )
    return counts


def _check_piece_can_move(char: str, rank_index: int, rank_name: str) -> None:
    """Unpromoted pawns and lances on the last rank, knights on the last two, can never move."""
    ranks_ahead = rank_index if char.isupper() else 8 - rank_index
    dead = (char.lower() in "pl" and ranks_ahead == 0) or (char.lower() == "n" and ranks_ahead < 2)
    if dead:
        raise InvalidSfenError(f"'{char}' on rank {rank_name} could never move again")


def _check_hand_field(hand_text: str, counts: dict[str, int]) -> None:
    if hand_text == "-":
        hand_text = ""
    position = 0
    while position < len(hand_text):
        start = position
        while position < len(hand_text) and hand_text[position].isdigit():
            position += 1
        if position == len(hand_text):
            raise InvalidSfenError(f"hand {hand_text!r} ends with a count and no piece")
        amount = int(hand_text[start:position]) if position > start else 1
        char = hand_text[position]
        if char.lower() not in _PIECES or char.lower() == "k" or amount < 1:
            raise InvalidSfenError(f"bad hand entry {hand_text[start:position + 1]!r} in {hand_text!r}")
        counts[char] += amount
        position += 1
    for kind, size in _SET_SIZE.items():
        total = counts[kind] + counts[kind.upper()]
        if total > size:
            raise InvalidSfenError(f"position holds {total} pieces of kind {kind!r}; a set has {size}")


class Game:
    """A Shogi game with full adjudication (see the module docstring for the rules).

    ``sfen`` is the starting position (``None`` or ``"startpos"`` for the usual one).
    ``max_plies`` moves without a result is a draw; ``ply`` counts moves played in
    this game, not the SFEN move number.

    :raises InvalidSfenError: if ``sfen`` is malformed or impossible.
    :raises ValueError: if ``max_plies`` is not positive.
    """

    __slots__ = (
        "_illegal_move",
        "_keys",
        "_legal",
        "_moves",
        "_outcome",
        "_seen",
        "board",
        "entering_king",
        "max_plies",
        "start_sfen",
    )

    def __init__(self, sfen: str | None = None, max_plies: int = DEFAULT_MAX_PLIES,
                 entering_king: bool = True) -> None:
        if max_plies < 1:
            raise ValueError(f"max_plies={max_plies} must be at least 1")
        self.start_sfen = STARTING_SFEN if sfen is None else normalize_sfen(sfen)
        self.board = cshogi.Board(self.start_sfen)
        self.max_plies = max_plies
        self.entering_king = entering_king
        self._moves: list[int] = []
        key = self.board.zobrist_hash()
        self._keys: list[int] = [key]
        self._seen: dict[int, int] = {key: 1}
        self._legal: list[int] = list(self.board.legal_moves)
        self._illegal_move: int | None = None
        self._outcome: Outcome | None = self._adjudicate(1)

    # --- state -------------------------------------------------------------------------
    @property
    def ply(self) -> int:
        """Moves played in this game."""
        return len(self._moves)

    @property
    def side_to_move(self) -> Color:
        return Color.from_number(self.board.turn)

    @property
    def outcome(self) -> Outcome | None:
        """How the game ended, or ``None`` while it goes on."""
        return self._outcome

    @property
    def is_over(self) -> bool:
        return self._outcome is not None

    @property
    def moves(self) -> list[int]:
        """The moves played so far (a copy), as cshogi move ints."""
        return self._moves.copy()

    @property
    def repetitions(self) -> int:
        """How many times the current position occurred before in this game (0 to 3)."""
        return self._seen[self._keys[-1]] - 1

    def legal_moves(self) -> list[int]:
        """The legal moves of the side to move, as cshogi move ints (a fresh list)."""
        return self._legal.copy()

    def sfen(self) -> str:
        """The current position as SFEN (the move number is the board's, 1-based)."""
        return str(self.board.sfen())

    # --- moves -------------------------------------------------------------------------
    def push(self, move: int) -> None:
        """Play ``move`` (a cshogi move int) for the side to move and adjudicate.

        A move that is not in the legal-move list is not played: the game ends at once
        as a loss for the side to move (``illegal_move``) and an error is logged.

        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome}); pop() a move or start a new Game")
        if move not in self._legal:
            self._illegal_move = move
            self._outcome = Outcome(self.side_to_move.opponent, Termination.ILLEGAL_MOVE)
            logger.error("illegal move %s (%d) by %s in %s: %s", _describe(move), move,
                         self.side_to_move, self.sfen(), self._outcome)
            return
        board = self.board
        board.push(move)
        self._moves.append(move)
        key = board.zobrist_hash()
        self._keys.append(key)
        count = self._seen.get(key, 0) + 1
        self._seen[key] = count
        self._legal = list(board.legal_moves)
        self._outcome = self._adjudicate(count)

    def push_usi(self, usi: str) -> int:
        """Play a move written in USI (``7g7f``, ``P*5e``, ``8h2b+``) and return it as an int.

        :raises IllegalMoveError: if the text is not a legal move here (the game is unchanged).
        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome}); pop() a move or start a new Game")
        move = self.board.move_from_usi(usi) if 4 <= len(usi) <= 5 else 0
        if move == 0 or move not in self._legal:
            raise IllegalMoveError(f"{usi!r} is not a legal USI move in {self.sfen()}")
        self.push(move)
        return int(move)

    def pop(self) -> int:
        """Take back the last move and return it; the game is no longer over.

        If the game ended by an illegal move, that attempt (which never reached the board)
        is what is taken back.

        :raises IndexError: if no move has been played.
        """
        if self._illegal_move is not None:
            move, self._illegal_move = self._illegal_move, None
            self._outcome = None
            return move
        if not self._moves:
            raise IndexError("pop() with no move played")
        key = self._keys.pop()
        remaining = self._seen[key] - 1
        if remaining:
            self._seen[key] = remaining
        else:
            del self._seen[key]
        self.board.pop()
        self._legal = list(self.board.legal_moves)
        self._outcome = None
        return self._moves.pop()

    def resign(self) -> Outcome:
        """The side to move resigns; returns the outcome.

        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome})")
        self._outcome = Outcome(self.side_to_move.opponent, Termination.RESIGNATION)
        return self._outcome

    def forfeit(self) -> Outcome:
        """The side to move forfeits (an engine that died or stalled); returns the outcome.

        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome})")
        self._outcome = Outcome(self.side_to_move.opponent, Termination.FORFEIT)
        return self._outcome

    def end(self, outcome: Outcome) -> None:
        """End the game with a result decided off the board (a record's stated result).

        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome})")
        self._outcome = outcome

    def _adjudicate(self, occurrences: int) -> Outcome | None:
        """The result of the current position, if it ends the game (rules in the module doc)."""
        board = self.board
        to_move = Color.from_number(board.turn)
        if not self._legal:
            reason = Termination.CHECKMATE if board.is_check() else Termination.NO_LEGAL_MOVES
            return Outcome(to_move.opponent, reason)
        if occurrences >= REPETITIONS_TO_END:
            state = board.is_draw()
            if state == cshogi.REPETITION_WIN:  # the opponent checked on every move of the cycle
                return Outcome(to_move, Termination.PERPETUAL_CHECK)
            if state == cshogi.REPETITION_LOSE:  # the side to move did
                return Outcome(to_move.opponent, Termination.PERPETUAL_CHECK)
            return Outcome(None, Termination.REPETITION)
        if self.entering_king and board.is_nyugyoku():
            return Outcome(to_move, Termination.ENTERING_KING)
        if len(self._moves) >= self.max_plies:
            return Outcome(None, Termination.MAX_PLIES)
        return None

    # --- records -----------------------------------------------------------------------
    @classmethod
    def from_position(cls, position: str, max_plies: int | None = None,
                      entering_king: bool = True) -> Game:
        """Replay a USI position string: ``[position] startpos|sfen SFEN [moves m1 m2 ...]``.

        ``max_plies`` defaults to the larger of the usual limit and the number of moves.

        :raises InvalidSfenError: if the SFEN is bad.
        :raises IllegalMoveError: naming the first move that is malformed or illegal.
        """
        words = position.split()
        if words[:1] == ["position"]:
            words = words[1:]
        if "moves" in words:
            split = words.index("moves")
            setup, moves = words[:split], words[split + 1:]
        else:
            setup, moves = words, []
        if setup == ["startpos"]:
            sfen = STARTING_SFEN
        elif setup[:1] == ["sfen"] and len(setup) >= 4:
            sfen = " ".join(setup[1:])
        else:
            raise InvalidSfenError(f"position {position!r} must start with 'startpos' or 'sfen <SFEN>'")
        limit = max(DEFAULT_MAX_PLIES, len(moves)) if max_plies is None else max_plies
        game = cls(sfen, max_plies=limit, entering_king=entering_king)
        for number, usi in enumerate(moves, start=1):
            try:
                game.push_usi(usi)
            except (IllegalMoveError, GameOverError) as exc:
                raise IllegalMoveError(f"move {number} of the position string: {exc}") from exc
        return game

    def to_position(self) -> str:
        """This game as a USI ``position`` argument (``startpos moves ...`` or ``sfen ... moves ...``)."""
        setup = "startpos" if self.start_sfen == STARTING_SFEN else f"sfen {self.start_sfen}"
        if not self._moves:
            return setup
        return f"{setup} moves " + " ".join(cshogi.move_to_usi(move) for move in self._moves)

    def to_csa(self, names: Sequence[str] = ("Keisei", "Keisei")) -> str:
        """The game as CSA text (V2.2); the end line says how it ended (see ``_CSA_ENDINGS``)."""
        lines = ["V2.2", f"N+{names[0]}", f"N-{names[1]}"]
        if self.start_sfen == STARTING_SFEN:
            lines += ["PI", "+"]
        else:
            lines.append(cshogi.Board(self.start_sfen).csa_pos().rstrip("\n"))
        for index, move in enumerate(self._moves):
            color = self._color_of_ply(index)
            lines.append(("+" if color is Color.BLACK else "-") + cshogi.move_to_csa(move))
        lines += _csa_ending(self._outcome, self.side_to_move, self._illegal_move)
        return "\n".join(lines) + "\n"

    def to_kif(self, names: Sequence[str] = ("Keisei", "Keisei")) -> str:
        """The game as KIF text (Japanese notation; save as cp932 ``.kif`` or UTF-8 ``.kifu``)."""
        lines = ["# KIF形式棋譜ファイル Generated by Keisei"]
        if self.start_sfen == STARTING_SFEN:
            lines.append("手合割：平手")
        else:
            lines.append(cshogi.KIF.board_to_bod(cshogi.Board(self.start_sfen)).rstrip("\n"))
        lines += [f"先手：{names[0]}", f"後手：{names[1]}", "手数----指手---------消費時間--"]
        previous = None
        for number, move in enumerate(self._moves, start=1):
            lines.append(f"{number:>4} {cshogi.KIF.move_to_kif(move, previous)}   ( 0:00/00:00:00)")
            previous = move
        lines += _kif_ending(self._outcome, self.side_to_move, len(self._moves))
        return "\n".join(lines) + "\n"

    @classmethod
    def from_csa(cls, text: str, max_plies: int | None = None) -> Game:
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
        return cls._replay(record.sfen, [int(m) for m in record.moves], str(record.endgame),
                           int(record.win), max_plies)

    @classmethod
    def from_kif(cls, text: str, max_plies: int | None = None) -> Game:
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
        return cls._replay(record.sfen, [int(m) for m in record.moves], endgame, win, max_plies)

    @classmethod
    def _replay(cls, sfen: str, moves: list[int], endgame: str, win: int,
                max_plies: int | None) -> Game:
        if max_plies is None:
            # One more than the record's moves, so a long decided game is not cut to a draw.
            max_plies = (len(moves) if endgame == "%MAX_MOVES" and moves
                         else max(DEFAULT_MAX_PLIES, len(moves) + 1))
        try:
            # No automatic declaration on replay: a player may play on from a position where
            # declaring would win; a %KACHI end is checked below instead.
            game = cls(sfen, max_plies=max_plies, entering_king=False)
        except InvalidSfenError as exc:
            raise RecordError(f"record's start position is invalid: {exc}", "bad position") from exc
        for number, move in enumerate(moves, start=1):
            if game.is_over:
                raise RecordError(f"move {number} follows the end of the game ({game.outcome})",
                                  "illegal move")
            if move not in game._legal:
                raise RecordError(f"move {number} ({_describe(move)}) is illegal in {game.sfen()}",
                                  "illegal move")
            game.push(move)
        game.entering_king = True  # for play from here on, as every Game
        known, claimed = _claimed_result(endgame, win, game.side_to_move)
        decided = game._outcome
        after = f"after move {len(moves)}" if moves else "at the start"
        if decided is not None:
            if known and claimed is not decided.winner:
                raise RecordError(f"the record claims {_result_words(claimed)} ({endgame}) but "
                                  f"the position {after} is {decided}", "false result")
            return game
        if endgame == "%KACHI" and game.board.is_nyugyoku():
            game._outcome = Outcome(game.side_to_move, Termination.ENTERING_KING)
            return game
        if endgame in _RULE_ENDINGS:
            raise RecordError(f"the record claims {_RULE_ENDINGS[endgame]} ({endgame}) but the "
                              f"position {after} is not one", "false result")
        game._outcome = _recorded_outcome(endgame, win, game.side_to_move)
        return game

    def _color_of_ply(self, index: int) -> Color:
        first = Color.BLACK if self.start_sfen.split()[1] == "b" else Color.WHITE
        return first if index % 2 == 0 else first.opponent


def _describe(move: int) -> str:
    to_square, from_square = move & 0x7F, (move >> 7) & 0x7F
    if to_square >= 81 or from_square >= 88:
        return "<not a move>"
    text = cshogi.move_to_usi(move)
    return "<not a move>" if text is None else str(text)


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
        note = _describe(illegal) if illegal is not None else "?"
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


# --- perft -----------------------------------------------------------------------------
def perft(sfen: str, depth: int) -> int:
    """Count the leaf nodes of the legal-move tree of ``depth`` plies from ``sfen``.

    Counts every legal move, non-promotions into the zone included, as the published
    tables do (start position: 30, 900, 25 470, 719 731, 19 861 490).

    :raises InvalidSfenError: if the SFEN is bad.
    :raises ValueError: if ``depth`` is negative.
    """
    if depth < 0:
        raise ValueError(f"perft depth {depth} must be 0 or more")
    return _perft(cshogi.Board(normalize_sfen(sfen)), depth)


def _perft(board: cshogi.Board, depth: int) -> int:
    if depth == 0:
        return 1
    moves = list(board.legal_moves)
    if depth == 1:
        return len(moves)
    total = 0
    for move in moves:
        board.push(move)
        total += _perft(board, depth - 1)
        board.pop()
    return total


# --- command line ----------------------------------------------------------------------
def play_random_game(seed: int | None = None, max_plies: int = DEFAULT_MAX_PLIES,
                     sfen: str | None = None) -> Game:
    """Play uniformly random legal moves until the game ends."""
    rng = random.Random(seed)
    game = Game(sfen, max_plies=max_plies)
    while game.outcome is None:
        game.push(rng.choice(game.legal_moves()))
    return game


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keisei.shogi perft SFEN DEPTH`` or ``python -m keisei.shogi play``."""
    parser = argparse.ArgumentParser(prog="python -m keisei.shogi", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    perft_parser = commands.add_parser("perft", help="count leaf nodes of the move tree")
    perft_parser.add_argument("sfen", help="an SFEN, or 'startpos'")
    perft_parser.add_argument("depth", type=int)
    play_parser = commands.add_parser("play", help="play one random game and print its record")
    play_parser.add_argument("--seed", type=int, default=None)
    play_parser.add_argument("--max-plies", type=int, default=DEFAULT_MAX_PLIES)
    play_parser.add_argument("--sfen", default=None, help="starting position (default: startpos)")
    play_parser.add_argument("--format", choices=("kif", "csa", "usi"), default="kif")
    args = parser.parse_args(argv)
    try:
        if args.command == "perft":
            started = time.perf_counter()
            nodes = perft(args.sfen, args.depth)
            elapsed = time.perf_counter() - started
            print(f"perft({args.depth}) = {nodes}  ({elapsed:.2f} s)")
            return 0
        game = play_random_game(args.seed, args.max_plies, args.sfen)
    except ValueError as exc:
        parser.error(str(exc))
    if args.format == "kif":
        sys.stdout.write(game.to_kif(("Random", "Random")))
    elif args.format == "csa":
        sys.stdout.write(game.to_csa(("Random", "Random")))
    else:
        print(game.to_position())
    print(f"# {game.ply} plies: {game.outcome}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
