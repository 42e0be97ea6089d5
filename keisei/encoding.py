"""What the network sees (observation planes) and says (action indices).

Everything is from the **side to move's** perspective: for White the board is rotated
by 180° and the colours swapped, so one network plays both sides.

Observation: ``NUM_PLANES`` = 122 binary planes of 9×9, built by cshogi's C++
implementation of dlshogi's features (planes 0–118) plus Keisei's repetition planes.
A plane is indexed ``[file, rank]`` as cshogi squares are (``square = file * 9 + rank``),
seen from the mover: file index 0 is file 1, rank index 0 the far rank (``a`` for Black).

=========  ===============================================================================
planes     meaning ("own" = the side to move, "their" = the opponent)
=========  ===============================================================================
0–13       own pieces, one plane per kind: pawn, lance, knight, silver, bishop, rook, gold,
           king, then promoted pawn, lance, knight, silver, bishop (horse), rook (dragon)
14–27      squares attacked by own pieces of each of those 14 kinds
28–30      squares attacked by at least 1, 2, 3 own pieces
31–61      the same 31 planes for their pieces
62–89      own hand, all-ones planes counting pieces: pawn 8 (≥1 … ≥8), lance 4, knight 4,
           silver 4, gold 4, bishop 2, rook 2
90–117     their hand, same layout
118        all ones if the side to move is in check
119–121    all ones if the current position occurred before at least 1, 2, 3 times
           (sennichite ends the game at the fourth occurrence)
=========  ===============================================================================

Actions: ``NUM_ACTIONS`` = 27 × 81 = 2187, dlshogi's scheme (``action = plane * 81 +
destination``), chosen because it is compact (a 2187-way policy head instead of tens of
thousands of from–to pairs), standard (it matches ``cshogi.dlshogi.make_move_label``
exactly, so policies and data interoperate with dlshogi tools), and convolutional (a
1×1 conv with 27 output channels is the policy head). Planes 0–9 are board moves by
direction from the mover's view (up, up-left, up-right, left, right, down, down-left,
down-right, knight up-left, knight up-right), 10–19 the same with promotion, 20–26
drops of pawn, lance, knight, silver, bishop, rook, gold. It is a bijection on the
legal moves of every position: two legal moves to the same square along the same
direction would need two pieces on one ray, and the nearer blocks the farther.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import cshogi
import numpy as np
from cshogi import dlshogi

from keisei.errors import IllegalMoveError

if TYPE_CHECKING:
    from keisei.shogi import Game

NUM_MOVE_PLANES = 27
NUM_ACTIONS = NUM_MOVE_PLANES * 81
DLSHOGI_PLANES = dlshogi.FEATURES1_NUM + dlshogi.FEATURES2_NUM
REPETITION_PLANES = 3
NUM_PLANES = DLSHOGI_PLANES + REPETITION_PLANES
OBSERVATION_SHAPE = (NUM_PLANES, 9, 9)

# Material values (pawn = 1), by cshogi piece type; the king has none. Greedy players
# capture by them and reward shaping weighs the material balance with them.
PIECE_VALUES = {
    cshogi.PAWN: 1, cshogi.LANCE: 3, cshogi.KNIGHT: 4, cshogi.SILVER: 5, cshogi.GOLD: 6,
    cshogi.BISHOP: 8, cshogi.ROOK: 10, cshogi.PROM_PAWN: 7, cshogi.PROM_LANCE: 6,
    cshogi.PROM_KNIGHT: 6, cshogi.PROM_SILVER: 6, cshogi.PROM_BISHOP: 10, cshogi.PROM_ROOK: 12,
}

MOVE_PLANE_NAMES = (
    "up", "up_left", "up_right", "left", "right", "down", "down_left", "down_right",
    "knight_left", "knight_right",
    *(f"{name}_promote" for name in ("up", "up_left", "up_right", "left", "right", "down",
                                      "down_left", "down_right", "knight_left", "knight_right")),
    "drop_pawn", "drop_lance", "drop_knight", "drop_silver", "drop_bishop", "drop_rook", "drop_gold",
)


def material_weights() -> np.ndarray:
    """Per observation bit, what it adds to the mover's material balance (see the plane
    table: one board bit is one piece; a hand plane is all ones once per piece held)."""
    board_kinds = (cshogi.PAWN, cshogi.LANCE, cshogi.KNIGHT, cshogi.SILVER, cshogi.BISHOP,
                   cshogi.ROOK, cshogi.GOLD, cshogi.KING, cshogi.PROM_PAWN, cshogi.PROM_LANCE,
                   cshogi.PROM_KNIGHT, cshogi.PROM_SILVER, cshogi.PROM_BISHOP, cshogi.PROM_ROOK)
    hand_kinds = ((cshogi.PAWN, 8), (cshogi.LANCE, 4), (cshogi.KNIGHT, 4), (cshogi.SILVER, 4),
                  (cshogi.GOLD, 4), (cshogi.BISHOP, 2), (cshogi.ROOK, 2))
    board = [PIECE_VALUES.get(kind, 0) for kind in board_kinds]
    hand = [PIECE_VALUES[kind] / 81 for kind, planes in hand_kinds for _ in range(planes)]
    weights = np.zeros((NUM_PLANES, 81), dtype=np.float32)
    weights[0:14] = np.array(board, dtype=np.float32)[:, None]
    weights[31:45] = -weights[0:14]
    weights[62:90] = np.array(hand, dtype=np.float32)[:, None]
    weights[90:118] = -weights[62:90]
    return weights.reshape(-1)


def material_balance(packed_observations: np.ndarray) -> np.ndarray:
    """The mover's material balance (own pieces on the board and in hand minus the
    opponent's, valued by ``PIECE_VALUES``) of each bit-packed observation ``(N, bytes)``."""
    bits = np.unpackbits(packed_observations, axis=1, count=_MATERIAL_WEIGHTS.size)
    balance: np.ndarray = np.rint(bits @ _MATERIAL_WEIGHTS).astype(np.float32)
    return balance


def _build_label_table() -> np.ndarray:
    """``table[colour, move & 0x7FFF]`` = action index, or -1 where the 15 bits are no move.

    Vectorised form of dlshogi's ``make_move_label``: direction from the mover's view
    (White's squares rotated, ``sq -> 80 - sq``), +10 planes for promotion, 20 + piece
    for drops.
    """
    move16 = np.arange(1 << 15, dtype=np.int64)
    to_square = move16 & 0x7F
    from_square = (move16 >> 7) & 0x7F
    promote = (move16 >> 14) & 1
    table = np.full((2, 1 << 15), -1, dtype=np.int16)
    for colour in (0, 1):
        to_view = to_square if colour == 0 else 80 - to_square
        from_view = from_square if colour == 0 else 80 - from_square
        dx = from_view // 9 - to_view // 9  # file difference
        dy = to_view % 9 - from_view % 9  # rank difference; negative is forward
        direction = np.select(
            [(dy < 0) & (dx == 0), (dy == -2) & (dx == -1), (dy == -2) & (dx == 1),
             (dy < 0) & (dx < 0), (dy < 0) & (dx > 0), (dy == 0) & (dx < 0),
             (dy == 0) & (dx > 0), (dy > 0) & (dx == 0), (dy > 0) & (dx < 0)],
            [0, 8, 9, 1, 2, 3, 4, 5, 6], default=7,
        ) + 10 * promote
        board_move = (to_square < 81) & (from_square < 81) & (from_square != to_square)
        drop = (to_square < 81) & (from_square >= 81) & (from_square < 88) & (promote == 0)
        label = np.where(drop, (20 + from_square - 81) * 81 + to_view, direction * 81 + to_view)
        table[colour] = np.where(board_move | drop, label, -1)
    table.flags.writeable = False
    return table


_LABELS = _build_label_table()
_MATERIAL_WEIGHTS = material_weights()


def move_to_action(board: cshogi.Board, move: int) -> int:
    """The action index of ``move`` for the side to move of ``board``.

    Does not check legality (use ``legal_action_mask`` for that).

    :raises IllegalMoveError: if ``move`` does not encode a move at all.
    """
    action = int(_LABELS[board.turn, move & 0x7FFF])
    if action < 0:
        raise IllegalMoveError(f"{move} does not encode a move (bad from/to squares)")
    return action


def legal_actions(board: cshogi.Board, moves: Sequence[int]) -> np.ndarray:
    """The action index of each of ``moves`` (legal moves of ``board``) for its side to move."""
    actions: np.ndarray = _LABELS[board.turn, np.asarray(moves, dtype=np.int64) & 0x7FFF]
    return actions


def action_to_move(board: cshogi.Board, action: int) -> int:
    """The legal move of ``board`` whose action index is ``action``.

    :raises IllegalMoveError: if no legal move has that index.
    """
    table = _LABELS[board.turn]
    for move in board.legal_moves:
        if table[move & 0x7FFF] == action:
            return int(move)
    raise IllegalMoveError(f"action {action} ({describe_action(action)}) is not legal in {board.sfen()}")


def describe_action(action: int) -> str:
    """Human-readable action, e.g. ``"up_promote to 2b (mover's view)"``."""
    if not 0 <= action < NUM_ACTIONS:
        return f"out of range 0..{NUM_ACTIONS - 1}"
    plane, square = divmod(action, 81)
    return f"{MOVE_PLANE_NAMES[plane]} to {cshogi.SQUARE_NAMES[square]} (mover's view)"


def legal_action_mask(board: cshogi.Board) -> np.ndarray:
    """Boolean ``(NUM_ACTIONS,)`` array, true exactly at the actions of the legal moves."""
    mask = np.zeros(NUM_ACTIONS, dtype=bool)
    moves = np.fromiter(board.legal_moves, dtype=np.int64)
    mask[_LABELS[board.turn, moves & 0x7FFF]] = True
    return mask


def encode_observation(board: cshogi.Board, repetitions: int | None = None) -> np.ndarray:
    """The ``OBSERVATION_SHAPE`` float32 planes of ``board`` (see the module docstring).

    ``repetitions`` is how often the position occurred before (``Game.repetitions``);
    when ``None`` it is taken from the board's own history, which tells only whether it
    occurred before (0 or 1).
    """
    planes = np.empty((1, *OBSERVATION_SHAPE), dtype=np.float32)
    if repetitions is None:
        repetitions = 0 if board.is_draw() == cshogi.NOT_REPETITION else 1
    _fill_planes(planes, 0, board, repetitions)
    observation: np.ndarray = planes[0]
    return observation


def fill_observation(planes: np.ndarray, index: int, board: cshogi.Board, repetitions: int) -> None:
    """Write ``board``'s observation into ``planes[index]``.

    :raises ValueError: unless ``planes`` is a C-contiguous float32 ``(N, *OBSERVATION_SHAPE)``
        array with ``0 <= index < N`` (cshogi writes through raw pointers without checks).
    """
    if (planes.dtype != np.float32 or planes.shape[1:] != OBSERVATION_SHAPE
            or not planes.flags.c_contiguous or not 0 <= index < len(planes)):
        raise ValueError(f"planes must be C-contiguous float32 (N, {OBSERVATION_SHAPE}) and "
                         f"index in range; got {planes.dtype} {planes.shape}, index {index}")
    _fill_planes(planes, index, board, repetitions)


def sequence_actions_and_masks(legal_lists: Sequence[Sequence[int]], turns: np.ndarray,
                               moves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Action indices of ``moves`` and legal masks of a sequence of positions, vectorised.

    ``legal_lists[t]`` are the legal moves of position t, ``turns[t]`` its side to move,
    ``moves[t]`` the move played there (it must be among the legal ones).
    """
    count = len(legal_lists)
    lengths = np.fromiter(map(len, legal_lists), dtype=np.int64, count=count)
    legal = np.fromiter((m for moves_here in legal_lists for m in moves_here), dtype=np.int64,
                        count=int(lengths.sum()))
    rows = np.repeat(np.arange(count), lengths)
    masks = np.zeros((count, NUM_ACTIONS), dtype=bool)
    masks[rows, _LABELS[np.repeat(turns.astype(np.int64), lengths), legal & 0x7FFF]] = True
    actions = _LABELS[turns.astype(np.int64), moves.astype(np.int64) & 0x7FFF].astype(np.int16)
    return actions, masks


def _fill_planes(planes: np.ndarray, index: int, board: cshogi.Board, repetitions: int) -> None:
    # cshogi writes through raw pointers with no shape or dtype check; the callers
    # allocate `planes` as C-contiguous float32 (N, NUM_PLANES, 9, 9), so these row
    # slices are contiguous blocks of exactly the sizes the C++ code writes.
    dlshogi.make_input_features(board, planes[index, :dlshogi.FEATURES1_NUM],
                                planes[index, dlshogi.FEATURES1_NUM:DLSHOGI_PLANES])
    repetition_planes = planes[index, DLSHOGI_PLANES:]
    repetition_planes[:repetitions] = 1.0
    repetition_planes[repetitions:] = 0.0


class BatchEncoder:
    """Encodes up to ``capacity`` games at once into reusable buffers.

    ``encode(games)`` fills observations (float32, ready for the network) and legal
    masks; ``moves_for(actions)`` then maps one chosen action per game back to its move
    with a single gather, with no per-move Python work.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be at least 1")
        self.capacity = capacity
        self.observations = np.zeros((capacity, *OBSERVATION_SHAPE), dtype=np.float32)
        self.masks = np.zeros((capacity, NUM_ACTIONS), dtype=bool)
        # Only read where the mask is true, so it is never cleared.
        self._moves = np.zeros((capacity, NUM_ACTIONS), dtype=np.int32)
        self._count = 0

    def encode(self, games: Sequence[Game]) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``games`` (none of them over); return views ``(observations, masks)``.

        The views are overwritten by the next call.

        :raises ValueError: if there are more games than ``capacity``.
        """
        count = len(games)
        if count > self.capacity:
            raise ValueError(f"{count} games exceed the encoder's capacity {self.capacity}")
        legal_lists = []
        turns = []
        for index, game in enumerate(games):
            _fill_planes(self.observations, index, game.board, game.repetitions)
            legal_lists.append(game.legal_moves())
            turns.append(game.board.turn)
        lengths = np.fromiter(map(len, legal_lists), dtype=np.int64, count=count)
        moves = np.fromiter((m for moves in legal_lists for m in moves), dtype=np.int64,
                            count=int(lengths.sum()))
        rows = np.repeat(np.arange(count), lengths)
        actions = _LABELS[np.repeat(np.asarray(turns, dtype=np.int64), lengths), moves & 0x7FFF]
        masks = self.masks[:count]
        masks[:] = False
        masks[rows, actions] = True
        self._moves[rows, actions] = moves
        self._count = count
        return self.observations[:count], masks

    def moves_for(self, actions: np.ndarray) -> np.ndarray:
        """The move of each game for its chosen action (one per game of the last ``encode``).

        :raises IllegalMoveError: if an action is not legal for its game.
        """
        rows = np.arange(self._count)
        if len(actions) != self._count or not self.masks[rows, actions].all():
            raise IllegalMoveError("an action is not in its game's legal mask")
        moves: np.ndarray = self._moves[rows, actions]
        return moves

    def move_at(self, row: int, action: int) -> int:
        """The move of game ``row`` of the last ``encode`` for ``action``.

        :raises IllegalMoveError: if the action is not legal for that game.
        """
        if not 0 <= row < self._count or not self.masks[row, action]:
            raise IllegalMoveError(f"action {action} is not in game {row}'s legal mask")
        return int(self._moves[row, action])
