"""The self-play collector: the only code in Keisei that plays training games.

``Collector(model, config, sink)`` plays ``config.games`` games in lock-step: each ply
it encodes every position at once, runs **one** forward pass for all of them, samples a
legal move per game, and records the ply into per-slot arrays (vectorised across games;
the only per-game Python work is ``Game.push``). A finished game is handed to
``sink.put`` as a compact ``FinishedGame`` and a new game starts in its slot.

The collector knows nothing of sockets or processes: a remote actor passes a sink that
sends games to the learner, the learner's sequential fallback passes its buffer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from keisei.config import SelfPlayConfig
from keisei.encoding import (
    NUM_ACTIONS,
    NUM_PLANES,
    OBSERVATION_SHAPE,
    BatchEncoder,
    fill_observation,
    move_to_action,
    sequence_actions_and_masks,
)
from keisei.errors import InvalidSfenError, RecordError
from keisei.model import autocast, masked_logits, resolve_precision, sample_actions, to_device
from keisei.protocol import GameRecord
from keisei.shogi import Color, Game, Termination

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


def unpack_masks(packed: np.ndarray) -> np.ndarray:
    """``(N, MASK_BYTES)`` packed legal masks → ``(N, NUM_ACTIONS)`` bool."""
    return np.unpackbits(packed, axis=1, count=NUM_ACTIONS).view(bool)


@dataclass(frozen=True, eq=False)
class FinishedGame:
    """One finished self-play game, ply by ply, in compact dtypes.

    ``players[t]`` is the mover of ply t (0 black, 1 white); ``values`` and
    ``log_probs`` are the behaviour policy's, from the mover's view; ``winner`` is 0, 1
    or ``DRAW`` (-1).
    """

    observations: np.ndarray  # (T, OBSERVATION_BYTES) uint8, bit-packed planes
    legal_masks: np.ndarray  # (T, MASK_BYTES) uint8, bit-packed
    actions: np.ndarray  # (T,) int16
    moves: np.ndarray  # (T,) int32 cshogi moves, for records
    log_probs: np.ndarray  # (T,) float32
    values: np.ndarray  # (T,) float32
    players: np.ndarray  # (T,) uint8
    policy_versions: np.ndarray  # (T,) int32
    winner: int
    reason: Termination
    start_sfen: str

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def winner_color(self) -> Color | None:
        return None if self.winner == DRAW else Color.from_number(self.winner)

    def to_record(self) -> GameRecord:
        """The compact wire form: start position, moves and per-ply behaviour data."""
        return GameRecord(self.start_sfen, self.winner, self.reason, self.moves, self.log_probs,
                          self.values, self.policy_versions)

    def to_game(self) -> Game:
        """Replay the moves into a ``Game`` (for KIF/CSA records)."""
        game = Game(self.start_sfen, max_plies=max(self.length, 1))
        for move in self.moves:
            game.push(int(move))
        return game


def replay_game(record: GameRecord, max_plies: int, entering_king: bool = True) -> FinishedGame:
    """Rebuild a ``FinishedGame`` from its wire form by replaying the moves through ``Game``.

    This is the learner's check of what an actor sends: every move must be legal where it
    was played, the game must end exactly at the last move, and with the result claimed.

    :raises RecordError: naming the first problem.
    """
    try:
        game = Game(record.start_sfen, max_plies=max_plies, entering_king=entering_king)
    except InvalidSfenError as exc:
        raise RecordError(f"start position: {exc}") from exc
    length = record.length
    planes = np.empty((length, *OBSERVATION_SHAPE), dtype=np.float32)
    turns = np.empty(length, dtype=np.uint8)
    legal_lists = []
    for ply, move in enumerate(record.moves.tolist()):
        if game.outcome is not None:
            raise RecordError(f"ply {ply + 1} follows the end of the game ({game.outcome})")
        legal = game.legal_moves()
        if move not in legal:
            raise RecordError(f"ply {ply + 1}: move {move} is not legal in {game.sfen()}")
        fill_observation(planes, ply, game.board, game.repetitions)
        turns[ply] = game.board.turn
        legal_lists.append(legal)
        game.push(move)
    outcome = game.outcome
    if outcome is None:
        raise RecordError(f"the game is not over after its {length} plies")
    winner = DRAW if outcome.winner is None else outcome.winner.number
    if (winner, outcome.reason) != (record.winner, record.reason):
        raise RecordError(f"claimed result {record.winner}/{record.reason} but the moves give {outcome}")
    actions, masks = sequence_actions_and_masks(legal_lists, turns, record.moves)
    return FinishedGame(
        observations=pack_observations(planes), legal_masks=np.packbits(masks, axis=1),
        actions=actions, moves=record.moves.astype(np.int32), log_probs=record.log_probs.astype(np.float32),
        values=record.values.astype(np.float32), players=turns,
        policy_versions=record.policy_versions.astype(np.int32), winner=winner, reason=outcome.reason,
        start_sfen=game.start_sfen)


class GameSink(Protocol):
    """Where finished games go: the learner's buffer, or an actor's socket."""

    def put(self, game: FinishedGame) -> None: ...


@dataclass
class CollectorStats:
    """Running totals since the collector started."""

    steps: int = 0
    games: int = 0
    forced_mates: int = 0
    encode_seconds: float = 0.0
    inference_seconds: float = 0.0
    rules_seconds: float = 0.0


class Collector:
    """Plays ``config.games`` self-play games in lock-step with batched inference.

    ``policy_version`` is stamped on every ply; whoever loads new weights into ``model``
    sets it.
    """

    def __init__(self, model: nn.Module, config: SelfPlayConfig, sink: GameSink, *,
                 device: str | torch.device = "cpu", seed: int = 0, policy_version: int = 0,
                 precision: str = "float32") -> None:
        self.model = model
        self.config = config
        self.sink = sink
        self.device = torch.device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.policy_version = policy_version
        self.stats = CollectorStats()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        slots, plies = config.games, config.max_plies
        self._games = [self._new_game() for _ in range(slots)]
        self._encoder = BatchEncoder(slots)
        self._ply = np.zeros(slots, dtype=np.int64)
        self._slots = np.arange(slots)
        self._observations = np.zeros((slots, plies, OBSERVATION_BYTES), dtype=np.uint8)
        self._masks = np.zeros((slots, plies, MASK_BYTES), dtype=np.uint8)
        self._actions = np.zeros((slots, plies), dtype=np.int16)
        self._moves = np.zeros((slots, plies), dtype=np.int32)
        self._log_probs = np.zeros((slots, plies), dtype=np.float32)
        self._values = np.zeros((slots, plies), dtype=np.float32)
        self._players = np.zeros((slots, plies), dtype=np.uint8)
        self._versions = np.zeros((slots, plies), dtype=np.int32)

    def _new_game(self) -> Game:
        return Game(max_plies=self.config.max_plies, entering_king=self.config.entering_king)

    def collect(self, steps: int) -> int:
        """Play until at least ``steps`` plies have been recorded; return how many were."""
        start = self.stats.steps
        self.model.eval()
        while self.stats.steps - start < steps:
            self.step()
        return self.stats.steps - start

    def step(self) -> int:
        """One ply in every game; finished games go to the sink. Returns how many finished."""
        started = time.perf_counter()
        observations, masks = self._encoder.encode(self._games)
        encoded = time.perf_counter()
        forced = self._mating_actions(masks) if self.config.mate_search else None
        actions, log_probs, values = self._infer(observations, masks, forced)
        inferred = time.perf_counter()
        moves = self._encoder.moves_for(actions)
        self._record(observations, masks, actions, moves, log_probs, values)
        finished = 0
        for slot, (game, move) in enumerate(zip(self._games, moves.tolist(), strict=True)):
            game.push(move)
            if game.outcome is not None:
                self._finish(slot)
                finished += 1
        done = time.perf_counter()
        stats = self.stats
        stats.steps += len(self._games)
        stats.encode_seconds += encoded - started
        stats.inference_seconds += inferred - encoded
        stats.rules_seconds += done - inferred
        return finished

    def _mating_actions(self, masks: np.ndarray) -> np.ndarray:
        """Per game, the action of the first move of a legal forced mate within
        ``config.mate_search`` plies (cshogi's searches, about 2 µs at 3 plies), else -1."""
        forced = np.full(len(self._games), -1, dtype=np.int64)
        for slot, game in enumerate(self._games):
            board = game.board
            move = board.mate_move_in_1ply()
            for plies in range(3, self.config.mate_search + 1, 2):
                if move:
                    break
                move = board.mate_move(plies)
            if move:
                action = move_to_action(board, move)
                if masks[slot, action]:
                    forced[slot] = action
        self.stats.forced_mates += int((forced >= 0).sum())
        return forced

    def _infer(self, observations: np.ndarray, masks: np.ndarray,
               forced: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample a move per game; where ``forced`` holds an action (not -1), play it
        instead, with the network's log-probability of it at the sampling temperature."""
        temperature = self.config.temperature
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            inputs = to_device(observations, self.device)
            legal = to_device(masks, self.device)
            logits, values = self.model(inputs)
            masked = masked_logits(logits, legal)
            actions, log_probs = sample_actions(masked, temperature, self.generator)
            if forced is not None and bool((forced >= 0).any()):
                chosen = to_device(forced, self.device)
                use = chosen >= 0
                actions = torch.where(use, chosen, actions)
                all_log_probs = torch.log_softmax(masked.float() / temperature, dim=-1)
                log_probs = torch.where(use, all_log_probs.gather(1, actions[:, None]).squeeze(1),
                                        log_probs)
        return actions.cpu().numpy(), log_probs.cpu().numpy(), values.float().cpu().numpy()

    def _record(self, observations: np.ndarray, masks: np.ndarray, actions: np.ndarray,
                moves: np.ndarray, log_probs: np.ndarray, values: np.ndarray) -> None:
        slots, plies = self._slots, self._ply
        self._observations[slots, plies] = pack_observations(observations)
        self._masks[slots, plies] = np.packbits(masks, axis=1)
        self._actions[slots, plies] = actions
        self._moves[slots, plies] = moves
        self._log_probs[slots, plies] = log_probs
        self._values[slots, plies] = values
        self._players[slots, plies] = [game.board.turn for game in self._games]
        self._versions[slots, plies] = self.policy_version
        self._ply += 1

    def _finish(self, slot: int) -> None:
        game = self._games[slot]
        outcome = game.outcome
        assert outcome is not None  # only finished games reach here
        length = int(self._ply[slot])
        finished = FinishedGame(
            observations=self._observations[slot, :length].copy(),
            legal_masks=self._masks[slot, :length].copy(),
            actions=self._actions[slot, :length].copy(),
            moves=self._moves[slot, :length].copy(),
            log_probs=self._log_probs[slot, :length].copy(),
            values=self._values[slot, :length].copy(),
            players=self._players[slot, :length].copy(),
            policy_versions=self._versions[slot, :length].copy(),
            winner=DRAW if outcome.winner is None else outcome.winner.number,
            reason=outcome.reason,
            start_sfen=game.start_sfen,
        )
        self.stats.games += 1
        self._games[slot] = self._new_game()
        self._ply[slot] = 0
        self.sink.put(finished)

    def discard_in_flight(self) -> int:
        """Abandon every unfinished game (new ones start); return the plies dropped."""
        dropped = self.in_flight_steps()
        self._games = [self._new_game() for _ in self._games]
        self._ply[:] = 0
        return dropped

    def in_flight_steps(self) -> int:
        """Plies recorded in games not finished yet (lost if the collector is dropped)."""
        return int(self._ply.sum())
