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

from dataclasses import dataclass, field

import numpy as np

from keisei.encoding import (
    NUM_ACTIONS,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    fill_observation,
    legal_actions,
    sequence_actions_and_masks,
)
from keisei.errors import InvalidSfenError, RecordError
from keisei.shogi import Game, Termination, mating_move

OBSERVATION_BITS = NUM_PLANES * 81
OBSERVATION_BYTES = (OBSERVATION_BITS + 7) // 8
MASK_BYTES = (NUM_ACTIONS + 7) // 8
DRAW = -1
TARGET_WIDTH = 32
"""Most moves a search target keeps: the actor sends the ``TARGET_WIDTH`` likeliest moves of
its search's improved policy, renormalised (the buffer stores targets this wide)."""
TARGET_TOLERANCE = 1e-3
"""How far from 1 a search target's probabilities may sum."""


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

    **Search targets** (``selfplay.search_share``), sparse: on ply ``target_plies[k]`` a
    search ran and its improved policy gives ``target_probs`` to ``target_moves`` (the
    ``target_counts[k]`` entries of target k, in order of k); ``target_values[k]`` is the
    search's root value for the mover. Games without search have them empty.

    **A game against the opponent pool** (``pool.share``) names its ``opponent`` and the
    colour the learner's policy played, ``learner_side`` (0 black, 1 white); a self-play
    game has ``""`` and -1. Only the learner's side of such a game trains the policy.
    """

    start_sfen: str
    winner: int
    reason: Termination
    moves: np.ndarray  # int32 cshogi moves
    log_probs: np.ndarray  # float32
    values: np.ndarray  # float32
    policy_versions: np.ndarray  # int32
    target_plies: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), kw_only=True)
    target_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), kw_only=True)
    target_moves: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), kw_only=True)
    target_probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), kw_only=True)
    target_values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32),
                                      kw_only=True)
    opponent: str = field(default="", kw_only=True)
    learner_side: int = field(default=-1, kw_only=True)

    @property
    def length(self) -> int:
        return len(self.moves)

    @property
    def targets(self) -> int:
        """Plies that carry a search target."""
        return len(self.target_plies)

    def to_game(self) -> Game:
        """Replay the moves into a ``Game`` (for KIF/CSA records)."""
        game = Game(self.start_sfen, max_plies=max(self.length, 1))
        for move in self.moves:
            game.push(int(move))
        return game


@dataclass(frozen=True, eq=False)
class FinishedGame(GameRecord):
    """A finished game with its training data; ``players[t]`` is the mover of ply t
    (0 black, 1 white); ``target_actions`` are the action indices of ``target_moves``.
    ``forced[t]`` marks a ply its mover had no choice in: the only legal move, or a mate
    the self-play mate search played (``selfplay.mate_search``). Its behaviour
    log-probability is the network's, not the 1 it was played with, so the learner leaves
    it out of the policy-gradient term. ``trained[t]`` is false on an opponent's ply in a
    game against the opponent pool: not the learner's behaviour, so not trained on."""

    observations: np.ndarray  # (T, OBSERVATION_BYTES) uint8, bit-packed planes
    legal_masks: np.ndarray  # (T, MASK_BYTES) uint8, bit-packed
    actions: np.ndarray  # (T,) int16
    players: np.ndarray  # (T,) uint8
    target_actions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16), kw_only=True)
    forced: np.ndarray | None = field(default=None, kw_only=True)  # (T,) bool; None: none
    trained: np.ndarray | None = field(default=None, kw_only=True)  # (T,) bool; None: all

    @property
    def steps(self) -> int:
        """The plies that train the policy: all, except an opponent's in a game against the
        opponent pool (``trained``)."""
        return self.length if self.trained is None else int(self.trained.sum())

    def trained_plies(self) -> np.ndarray:
        """``trained`` as a ``(T,)`` bool array (all true when the game carries none)."""
        return np.ones(self.length, dtype=bool) if self.trained is None else self.trained

    def forced_plies(self) -> np.ndarray:
        """``forced`` as a ``(T,)`` bool array (all false when the game carries none)."""
        return np.zeros(self.length, dtype=bool) if self.forced is None else self.forced

    def dense_targets(self) -> tuple[np.ndarray, np.ndarray]:
        """The search targets per ply: actions ``(T, TARGET_WIDTH)`` int16 (-1 where none)
        and probabilities ``(T, TARGET_WIDTH)`` float32 (0 where none)."""
        actions = np.full((self.length, TARGET_WIDTH), -1, dtype=np.int16)
        probs = np.zeros((self.length, TARGET_WIDTH), dtype=np.float32)
        start = 0
        for ply, count in zip(self.target_plies.tolist(), self.target_counts.tolist(), strict=True):
            actions[ply, :count] = self.target_actions[start:start + count]
            probs[ply, :count] = self.target_probs[start:start + count]
            start += count
        return actions, probs


def check_targets(record: GameRecord) -> None:
    """Check a record's search targets against its length (legality is checked on replay):
    plies in order and in the game, 1 to ``TARGET_WIDTH`` moves each, no move twice,
    probabilities finite, non-negative and summing to 1, values in [-1, 1].

    :raises RecordError: naming the first problem.
    """
    plies, counts = record.target_plies, record.target_counts
    if not (len(counts) == len(plies) == len(record.target_values)):
        raise RecordError(f"{len(plies)} target plies, {len(counts)} counts and "
                          f"{len(record.target_values)} values", "bad target")
    if int(counts.sum()) != len(record.target_moves) or len(record.target_moves) != len(record.target_probs):
        raise RecordError(f"target counts sum to {int(counts.sum())} for {len(record.target_moves)} "
                          f"moves and {len(record.target_probs)} probabilities", "bad target")
    if len(plies) and (plies[0] < 0 or plies[-1] >= record.length or (np.diff(plies) <= 0).any()):
        raise RecordError(f"target plies must increase within the game's {record.length} plies",
                          "bad target")
    if ((counts < 1) | (counts > TARGET_WIDTH)).any():
        raise RecordError(f"a target has {int(counts.min())}..{int(counts.max())} moves "
                          f"(1..{TARGET_WIDTH})", "bad target")
    probs = record.target_probs
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise RecordError("target probabilities must be finite and non-negative", "bad target")
    if not np.isfinite(record.target_values).all() or (np.abs(record.target_values) > 1 + 1e-3).any():
        raise RecordError("target values must lie in [-1, 1]", "bad target")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    sums = np.add.reduceat(probs, bounds[:-1]) if len(plies) else np.zeros(0)
    bad = np.flatnonzero(np.abs(sums - 1.0) > TARGET_TOLERANCE)
    if len(bad):
        raise RecordError(f"the target of ply {int(plies[bad[0]]) + 1} sums to {float(sums[bad[0]]):.4f}, "
                          "not 1", "bad target")
    for k in range(len(plies)):
        moves = record.target_moves[bounds[k]:bounds[k + 1]]
        if len(np.unique(moves)) != len(moves):
            raise RecordError(f"the target of ply {int(plies[k]) + 1} names a move twice", "bad target")


def replay_game(record: GameRecord, max_plies: int, entering_king: bool = True,
                mate_search: int = 0, search_plays: bool = False) -> FinishedGame:
    """Rebuild a ``FinishedGame`` from its wire form by replaying the moves through ``Game``.

    This is the learner's check of what an actor sends: every move must be legal where it
    was played, the game must end exactly at the last move, and with the result claimed.
    The forced plies are found again as the actor found them: the only legal move, or
    the move ``keisei.shogi.mating_move`` gives at ``mate_search`` plies (the actor's
    setting, which the learner sent it) where that is the move played, and with
    ``search_plays`` (``selfplay.search_plays``) every ply with a search target.

    :raises RecordError: naming the first problem.
    """
    try:
        game = Game(record.start_sfen, max_plies=max_plies, entering_king=entering_king)
    except InvalidSfenError as exc:
        raise RecordError(f"start position: {exc}", "bad position") from exc
    length = record.length
    check_targets(record)
    if (record.learner_side in (0, 1)) != bool(record.opponent) or record.learner_side not in (-1, 0, 1):
        raise RecordError(f"opponent {record.opponent!r} with learner side {record.learner_side} "
                          "(a pool game names both, a self-play game neither)", "bad opponent")
    planes = np.empty((length, *OBSERVATION_SHAPE), dtype=np.float32)
    turns = np.empty(length, dtype=np.uint8)
    legal_lists = []
    forced = np.zeros(length, dtype=bool)
    target_actions = np.zeros(len(record.target_moves), dtype=np.int16)
    targets = _target_slices(record)
    for ply, move in enumerate(record.moves.tolist()):
        if game.outcome is not None:
            raise RecordError(f"ply {ply + 1} follows the end of the game ({game.outcome})",
                              "illegal move")
        legal = game.legal_moves()
        if move not in legal:
            raise RecordError(f"ply {ply + 1}: move {move} is not legal in {game.sfen()}",
                              "illegal move")
        target = targets.get(ply)
        if target is not None:
            target_moves = record.target_moves[target].tolist()
            illegal = [item for item in target_moves if item not in legal]
            if illegal:
                raise RecordError(f"ply {ply + 1}: the search target names move {illegal[0]}, "
                                  f"not legal in {game.sfen()}", "bad target")
            target_actions[target] = legal_actions(game.board, target_moves)
        fill_observation(planes, ply, game.board, game.repetitions)
        turns[ply] = game.board.turn
        legal_lists.append(legal)
        forced[ply] = len(legal) == 1 or (search_plays and target is not None) or (
            mate_search > 0 and mating_move(game, mate_search) == move)
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
        target_plies=record.target_plies.astype(np.int32),
        target_counts=record.target_counts.astype(np.int32),
        target_moves=record.target_moves.astype(np.int32),
        target_probs=record.target_probs.astype(np.float32),
        target_values=record.target_values.astype(np.float32),
        observations=pack_observations(planes), legal_masks=pack_masks(masks), actions=actions,
        players=turns, target_actions=target_actions, forced=forced,
        opponent=record.opponent, learner_side=record.learner_side,
        trained=turns == record.learner_side if record.opponent else None)


def _target_slices(record: GameRecord) -> dict[int, slice]:
    """Ply → the slice of ``target_moves``/``target_probs`` holding its target."""
    slices, start = {}, 0
    for ply, count in zip(record.target_plies.tolist(), record.target_counts.tolist(), strict=True):
        slices[ply] = slice(start, start + count)
        start += count
    return slices
