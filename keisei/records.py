"""Finished games: their wire record, their training form, packing, and validated replay.

A ``GameRecord`` is what crosses the wire and what an actor keeps: the start position,
the moves and, per ply, the behaviour log-probability, value and policy version (16
bytes a ply). A ``FinishedGame`` adds what training needs: the bit-packed observation
planes and legal masks, the action indices and the mover of each ply. The learner
never takes those from an actor: ``replay_game`` rebuilds them by replaying the
record's moves through ``Game``, which also rejects an illegal move or a false result.
The collector, the server and the buffer share this module; it knows no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keisei.encoding import (
    NUM_ACTIONS,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    fill_observation,
    sequence_actions_and_masks,
)
from keisei.errors import InvalidSfenError, RecordError
from keisei.shogi import Game, Termination

OBSERVATION_BITS = NUM_PLANES * 81
OBSERVATION_BYTES = (OBSERVATION_BITS + 7) // 8
MASK_BYTES = (NUM_ACTIONS + 7) // 8
DRAW = -1


def pack_observations(observations: np.ndarray) -> np.ndarray:
    """``(N, *OBSERVATION_SHAPE)`` binary planes → ``(N, OBSERVATION_BYTES)`` uint8 bits."""
    return np.packbits(observations.reshape(len(observations), -1) != 0, axis=1)


def unpack_observations(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_observations``: uint8 0/1 planes ``(N, *OBSERVATION_SHAPE)``."""
    bits = np.unpackbits(packed, axis=1, count=OBSERVATION_BITS)
    return bits.reshape(len(packed), *OBSERVATION_SHAPE)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """``(N, NUM_ACTIONS)`` bool legal masks → ``(N, MASK_BYTES)`` uint8 bits."""
    return np.packbits(masks, axis=1)


def unpack_masks(packed: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_masks``."""
    return np.unpackbits(packed, axis=1, count=NUM_ACTIONS).view(bool)


@dataclass(frozen=True, eq=False)
class GameRecord:
    """One finished game in wire form; arrays are per ply.

    ``winner`` is 0 (black), 1 (white) or ``DRAW``; ``log_probs`` and ``values`` are
    the behaviour policy's, from the mover's view.
    """

    start_sfen: str
    winner: int
    reason: Termination
    moves: np.ndarray  # int32 cshogi moves
    log_probs: np.ndarray  # float32
    values: np.ndarray  # float32
    policy_versions: np.ndarray  # int32

    @property
    def length(self) -> int:
        return len(self.moves)

    def to_game(self) -> Game:
        """Replay the moves into a ``Game`` (for KIF/CSA records)."""
        game = Game(self.start_sfen, max_plies=max(self.length, 1))
        for move in self.moves:
            game.push(int(move))
        return game


@dataclass(frozen=True, eq=False)
class FinishedGame(GameRecord):
    """A finished game with its training data; ``players[t]`` is the mover of ply t
    (0 black, 1 white)."""

    observations: np.ndarray  # (T, OBSERVATION_BYTES) uint8, bit-packed planes
    legal_masks: np.ndarray  # (T, MASK_BYTES) uint8, bit-packed
    actions: np.ndarray  # (T,) int16
    players: np.ndarray  # (T,) uint8


def replay_game(record: GameRecord, max_plies: int, entering_king: bool = True) -> FinishedGame:
    """Rebuild a ``FinishedGame`` from its wire form by replaying the moves through ``Game``.

    This is the learner's check of what an actor sends: every move must be legal where it
    was played, the game must end exactly at the last move, and with the result claimed.

    :raises RecordError: naming the first problem.
    """
    try:
        game = Game(record.start_sfen, max_plies=max_plies, entering_king=entering_king)
    except InvalidSfenError as exc:
        raise RecordError(f"start position: {exc}", "bad position") from exc
    length = record.length
    planes = np.empty((length, *OBSERVATION_SHAPE), dtype=np.float32)
    turns = np.empty(length, dtype=np.uint8)
    legal_lists = []
    for ply, move in enumerate(record.moves.tolist()):
        if game.outcome is not None:
            raise RecordError(f"ply {ply + 1} follows the end of the game ({game.outcome})",
                              "illegal move")
        legal = game.legal_moves()
        if move not in legal:
            raise RecordError(f"ply {ply + 1}: move {move} is not legal in {game.sfen()}",
                              "illegal move")
        fill_observation(planes, ply, game.board, game.repetitions)
        turns[ply] = game.board.turn
        legal_lists.append(legal)
        game.push(move)
    outcome = game.outcome
    if outcome is None:
        raise RecordError(f"the game is not over after its {length} plies", "false result")
    winner = DRAW if outcome.winner is None else outcome.winner.number
    if (winner, outcome.reason) != (record.winner, record.reason):
        raise RecordError(f"claimed result {record.winner}/{record.reason} but the moves give {outcome}",
                          "false result")
    actions, masks = sequence_actions_and_masks(legal_lists, turns, record.moves)
    return FinishedGame(
        start_sfen=game.start_sfen, winner=winner, reason=outcome.reason,
        moves=record.moves.astype(np.int32), log_probs=record.log_probs.astype(np.float32),
        values=record.values.astype(np.float32),
        policy_versions=record.policy_versions.astype(np.int32),
        observations=pack_observations(planes), legal_masks=pack_masks(masks), actions=actions,
        players=turns)
