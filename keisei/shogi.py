"""The game of Shogi: a thin, validating layer over cshogi.

cshogi (a C++ engine, GPL-3) generates moves and is exact on every published
perft count (``keisei.rules`` counts them). It leaves to its caller what a referee must do, and ``Game`` does it:

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

Records: ``to_position``/``from_position`` write and read USI ``startpos moves ...``;
KIF and CSA, read and written, are in ``keisei.kifu``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from enum import StrEnum

import cshogi

from keisei.errors import GameOverError, IllegalMoveError, InvalidSfenError

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
        self._legal: list[int] | None = None  # None until ``_legal_moves`` makes it
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
    def illegal_move(self) -> int | None:
        """The illegal move that ended the game, if one did (it was not played)."""
        return self._illegal_move

    def copy(self) -> Game:
        """A game of its own with the same start, settings and moves (replayed, so its
        repetition counts are the same; a result decided off the board is not copied)."""
        copy = Game(self.start_sfen, max_plies=self.max_plies, entering_king=self.entering_king)
        for move in self._moves:
            copy.push(move)
        return copy

    def is_legal(self, move: int) -> bool:
        """Whether ``move`` (a cshogi move int) is legal in the current position."""
        return move in self._legal_moves()

    def color_of_ply(self, index: int) -> Color:
        """The side that makes ply ``index`` (0-based) of this game."""
        first = Color.BLACK if self.start_sfen.split()[1] == "b" else Color.WHITE
        return first if index % 2 == 0 else first.opponent

    @property
    def repetitions(self) -> int:
        """How many times the current position occurred before in this game (0 to 3)."""
        return self._seen[self._keys[-1]] - 1

    def legal_moves(self) -> list[int]:
        """The legal moves of the side to move, as cshogi move ints (a fresh list)."""
        return self._legal_moves().copy()

    def _legal_moves(self) -> list[int]:
        """The legal-move list. ``push`` makes it (its result depends on it); ``pop`` leaves
        it to be made on first use (a search pops back through many positions whose moves
        it never asks for again)."""
        legal = self._legal
        if legal is None:
            legal = self._legal = list(self.board.legal_moves)
        return legal

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
        if move not in self._legal_moves():
            self._illegal_move = move
            self._outcome = Outcome(self.side_to_move.opponent, Termination.ILLEGAL_MOVE)
            logger.error("illegal move %s (%d) by %s in %s: %s", describe_move(move), move,
                         self.side_to_move, self.sfen(), self._outcome)
            return
        self.push_known(move)

    def push_known(self, move: int, *, adjudicate: bool = True) -> None:
        """Play ``move``, which the caller took from this position's legal moves, without
        checking it again (a search walking down moves it has played through before).

        With ``adjudicate`` the new position's legal moves and result are made as ``push``
        makes them. Without, both are left unknown: only for a position the caller knows
        does not end the game (one adjudicated on an earlier walk along the same moves,
        so with the same history); ``outcome`` then reads None and the legal moves are
        made on first use.
        """
        board = self.board
        board.push(move)
        self._moves.append(move)
        key = board.zobrist_hash()
        self._keys.append(key)
        count = self._seen.get(key, 0) + 1
        self._seen[key] = count
        if adjudicate:
            self._legal = list(board.legal_moves)
            self._outcome = self._adjudicate(count)
        else:
            self._legal = None

    def push_usi(self, usi: str) -> int:
        """Play a move written in USI (``7g7f``, ``P*5e``, ``8h2b+``) and return it as an int.

        :raises IllegalMoveError: if the text is not a legal move here (the game is unchanged).
        :raises GameOverError: if the game has already ended.
        """
        if self._outcome is not None:
            raise GameOverError(f"the game is over ({self._outcome}); pop() a move or start a new Game")
        move = self.board.move_from_usi(usi) if 4 <= len(usi) <= 5 else 0
        if move == 0 or move not in self._legal_moves():
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
        self._legal = None
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
        if not self._legal_moves():
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


def describe_move(move: int) -> str:
    """A move int as USI text, or ``<not a move>`` for an int that encodes none."""
    to_square, from_square = move & 0x7F, (move >> 7) & 0x7F
    if to_square >= 81 or from_square >= 88:
        return "<not a move>"
    text = cshogi.move_to_usi(move)
    return "<not a move>" if text is None else str(text)


def mating_move(game: Game, plies: int) -> int | None:
    """The first move of a forced mate within ``plies`` plies (1, 3, 5...; a mate in one
    is looked for first, then cshogi's searches at 3, 5... plies), if there is one and it
    is legal; ``None`` too when ``plies`` is 0. Deterministic: self-play plays it, and
    the learner finds the same move again when it replays an actor's game."""
    if plies <= 0:
        return None
    board = game.board
    move = board.mate_move_in_1ply()
    for depth in range(3, plies + 1, 2):
        if move:
            break
        move = board.mate_move(depth)
    return int(move) if move and game.is_legal(int(move)) else None


# --- games ---------------------------------------------------------------------------
def play_random_game(seed: int | None = None, max_plies: int = DEFAULT_MAX_PLIES,
                     sfen: str | None = None) -> Game:
    """Play uniformly random legal moves until the game ends."""
    rng = random.Random(seed)
    game = Game(sfen, max_plies=max_plies)
    while game.outcome is None:
        game.push(rng.choice(game.legal_moves()))
    return game
