"""The experience buffer: whole finished games in, fixed-size epochs out.

Arrays are preallocated. ``put`` computes each game's per-player GAE (on the whole game,
with the values recorded when it was played; the returns, the value's target, with their
own lambda and mixed with a search's root value where one ran), drops plies produced more than
``max_policy_lag`` policy versions ago (counted), and appends the rest. A mate the
self-play mate search played becomes its ply's training target (one move, probability
1) unless a search target is there already. An epoch is
ready when ``steps_per_epoch`` steps are held; ``take_epoch`` hands out exactly that
many, first in first out, and the rest carry over to the next epoch. Every accepted
step is handed out exactly once.

The invariant that keeps training alive: **only** ``learner.admission.Admission`` calls
``put``, holding its own lock, whoever played the game (a remote actor, a local actor or
the learner's in-process collector). So there is one writer at a time, a game that does
not fit (``BufferFullError``) waits in admission's queue instead of failing its writer,
and no interleaving of writers or collection modes can end training. The trainer takes,
commits and restores epochs from its own thread meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from keisei.encoding import material_balance
from keisei.errors import KeiseiError
from keisei.ppo import game_advantages, material_value_targets, shaping_advantages
from keisei.records import DRAW, MASK_BYTES, OBSERVATION_BYTES, TARGET_WIDTH, FinishedGame


class BufferFullError(KeiseiError, RuntimeError):
    """No room for a game: the caller must wait for ``take_epoch`` (back-pressure)."""


@dataclass(frozen=True)
class EpochBatch:
    """One epoch of training data (row t of each array is one step)."""

    observations: np.ndarray  # (N, OBSERVATION_BYTES) uint8, bit-packed
    legal_masks: np.ndarray  # (N, MASK_BYTES) uint8, bit-packed
    actions: np.ndarray  # (N,) int64
    log_probs: np.ndarray  # (N,) float32, behaviour policy
    values: np.ndarray  # (N,) float32, behaviour values
    advantages: np.ndarray  # (N,) float32
    returns: np.ndarray  # (N,) float32
    shaping_advantages: np.ndarray  # (N,) float32, per unit of shaping weight
    policy_versions: np.ndarray  # (N,) int32
    sources: np.ndarray  # (N,) int16, index into ExperienceBuffer.source_names
    search_actions: np.ndarray  # (N, TARGET_WIDTH) int16, a search target's moves (-1: none)
    search_probs: np.ndarray  # (N, TARGET_WIDTH) float32, their probabilities (0: none)
    forced: np.ndarray  # (N,) bool, a ply its mover had no choice in (FinishedGame.forced)

    @property
    def size(self) -> int:
        return len(self.actions)


@dataclass
class GameTally:
    """Finished games since the last ``drain_tally``."""

    games: int = 0
    plies: int = 0
    black: int = 0
    white: int = 0
    draws: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


_COLUMNS = {
    "observations": (np.uint8, (OBSERVATION_BYTES,)),
    "legal_masks": (np.uint8, (MASK_BYTES,)),
    "actions": (np.int64, ()),
    "log_probs": (np.float32, ()),
    "values": (np.float32, ()),
    "advantages": (np.float32, ()),
    "returns": (np.float32, ()),
    "shaping_advantages": (np.float32, ()),
    "policy_versions": (np.int32, ()),
    "sources": (np.int16, ()),
    "search_actions": (np.int16, (TARGET_WIDTH,)),
    "search_probs": (np.float32, (TARGET_WIDTH,)),
    "forced": (np.bool_, ()),
}
IN_PROCESS = "in-process"
"""The source name of games the learner's own collector played."""
OTHERS = "(others)"
"""The source name shared by every source past the first ``MAX_SOURCES``."""
MAX_SOURCES = 4096



def mate_plies(game: FinishedGame) -> np.ndarray:
    """``(T,)`` bool: the forced plies that had a choice, i.e. the mates the self-play mate
    search played, and with ``selfplay.search_plays`` the target search's moves (those carry
    a target of their own); the other forced plies had a single legal move."""
    forced = game.forced_plies()
    mates = forced.copy()
    if forced.any():
        moves = np.unpackbits(game.legal_masks[forced], axis=1).sum(axis=1)
        mates[forced] = moves > 1
    return mates


class ExperienceBuffer:
    """Preallocated FIFO of steps, filled with whole games (see the module docstring)."""

    def __init__(self, steps_per_epoch: int, capacity: int, *, gamma: float, gae_lambda: float,
                 max_policy_lag: int, policy_version: Callable[[], int] = lambda: 0,
                 shaping: bool = False, shaping_lambda: float = 0.0,
                 value_lambda: float | None = None, search_value_mix: float = 0.0,
                 draw_reward: float = 0.0, value_material_mix: float = 0.0,
                 value_material_scale: float = 10.0) -> None:
        if capacity < steps_per_epoch:
            raise ValueError(f"capacity {capacity} is smaller than steps_per_epoch {steps_per_epoch}")
        self.steps_per_epoch = steps_per_epoch
        self.capacity = capacity
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.value_lambda = gae_lambda if value_lambda is None else value_lambda
        self.search_value_mix = search_value_mix
        self.value_material_mix = value_material_mix
        self.value_material_scale = value_material_scale
        self.draw_reward = draw_reward
        self.max_policy_lag = max_policy_lag
        self.shaping = shaping
        self.shaping_lambda = shaping_lambda
        self.policy_version = policy_version  # the current one, read from its owner
        self.steps_accepted = 0
        self.steps_dropped_stale = 0
        self.last_game: FinishedGame | None = None  # the most recent game put, for records
        self.source_names = [IN_PROCESS, OTHERS]  # who played the steps: the ``sources`` column
        self._source_indices = {name: index for index, name in enumerate(self.source_names)}
        self._size = 0
        self._reserved = 0  # room held for a taken epoch until its update commits
        self._tally = GameTally()
        self._lock = threading.Lock()
        self._filled = threading.Condition(self._lock)
        self._arrays = {name: np.zeros((capacity, *shape), dtype=dtype)
                        for name, (dtype, shape) in _COLUMNS.items()}

    @property
    def size(self) -> int:
        return self._size

    @property
    def reserved(self) -> int:
        """Steps of the epoch being trained on (taken, not yet committed)."""
        return self._reserved

    def held(self) -> int:
        """Steps held: waiting, plus the epoch being trained on (read together)."""
        with self._lock:
            return self._size + self._reserved

    def ready(self) -> bool:
        return self._size >= self.steps_per_epoch

    def put(self, game: FinishedGame, source: str = IN_PROCESS) -> int:
        """Add a finished game played by ``source`` (an actor id); return the number of
        steps accepted (the rest were stale).

        :raises BufferFullError: if the fresh steps do not fit; nothing is added.
        """
        winner = None if game.winner == DRAW else game.winner
        advantages, returns = game_advantages(game.players, game.values, winner, self.gamma,
                                              self.gae_lambda, self.draw_reward)
        if self.value_lambda != self.gae_lambda:
            _, returns = game_advantages(game.players, game.values, winner, self.gamma,
                                         self.value_lambda, self.draw_reward)
        if self.search_value_mix and len(game.target_plies):
            plies = game.target_plies
            returns[plies] = ((1 - self.search_value_mix) * returns[plies]
                              + self.search_value_mix * game.target_values)
        balance = (material_balance(game.observations)
                   if self.shaping or self.value_material_mix else None)
        if balance is not None and self.value_material_mix:
            material = material_value_targets(game.players, balance, self.value_material_scale)
            mixed = (1 - self.value_material_mix) * returns + self.value_material_mix * material
            returns = np.where(np.isnan(material), returns, mixed).astype(np.float32)
        shaping = np.zeros(game.length, dtype=np.float32)
        if balance is not None and self.shaping:
            shaping = shaping_advantages(game.players, balance, self.gamma, self.shaping_lambda)
        search_actions, search_probs = game.dense_targets()
        forced = game.forced_plies()
        mates = mate_plies(game) & (search_probs.sum(axis=1) == 0)
        search_actions[mates, 0] = game.actions[mates]  # the mate played: the ply's target
        search_probs[mates, 0] = 1.0
        with self._lock:
            trained = game.trained_plies()  # an opponent's plies in a pool game: not trained
            fresh = game.policy_versions >= self.policy_version() - self.max_policy_lag
            keep = fresh & trained
            count = int(keep.sum())
            if self._size + self._reserved + count > self.capacity:
                raise BufferFullError(f"buffer holds {self._size} (+{self._reserved} in training) of "
                                      f"{self.capacity} steps; a game of {count} fresh steps does not fit")
            rows = slice(self._size, self._size + count)
            self._arrays["sources"][rows] = self._source_index(source)
            columns = {"observations": game.observations, "legal_masks": game.legal_masks,
                       "actions": game.actions, "log_probs": game.log_probs,
                       "values": game.values, "advantages": advantages, "returns": returns,
                       "shaping_advantages": shaping, "policy_versions": game.policy_versions,
                       "search_actions": search_actions, "search_probs": search_probs,
                       "forced": forced}
            for name, column in columns.items():
                self._arrays[name][rows] = column[keep]
            self._size += count
            self.steps_accepted += count
            self.steps_dropped_stale += game.steps - count
            self._count_game(game)
            self.last_game = game
            if self._size >= self.steps_per_epoch:
                self._filled.notify_all()
        return count

    def _source_index(self, source: str) -> int:
        index = self._source_indices.get(source)
        if index is None:
            if len(self.source_names) >= MAX_SOURCES:  # bounded: the rest share one name
                return self._source_indices[OTHERS]
            index = self._source_indices[source] = len(self.source_names)
            self.source_names.append(source)
        return index

    def sources_of(self, batch: EpochBatch) -> dict[str, int]:
        """Steps per source in ``batch``."""
        indices, counts = np.unique(batch.sources, return_counts=True)
        with self._lock:
            return {self.source_names[int(index)]: int(count)
                    for index, count in zip(indices, counts, strict=True)}

    def wait_until_ready(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for an epoch to be ready; return ``ready()``."""
        with self._filled:
            return self._filled.wait_for(lambda: self._size >= self.steps_per_epoch, timeout)

    def _count_game(self, game: FinishedGame) -> None:
        tally = self._tally
        tally.games += 1
        tally.plies += game.length
        if game.winner == DRAW:
            tally.draws += 1
        elif game.winner == 0:
            tally.black += 1
        else:
            tally.white += 1
        tally.reasons[str(game.reason)] = tally.reasons.get(str(game.reason), 0) + 1

    def drain_tally(self) -> GameTally:
        """Finished-game statistics since the last call."""
        with self._lock:
            tally, self._tally = self._tally, GameTally()
        return tally

    def take_epoch(self) -> EpochBatch:
        """Remove and return the oldest ``steps_per_epoch`` steps, keeping their room reserved
        until ``commit_epoch`` (the update succeeded) or ``restore_epoch`` (it did not).

        :raises RuntimeError: if the epoch is not ready, or a taken one is still pending.
        """
        with self._lock:
            count = self.steps_per_epoch
            if self._size < count or self._reserved:
                raise RuntimeError(f"take_epoch() with {self._size} of {count} steps and "
                                   f"{self._reserved} reserved; wait for ready() and commit first")
            self._reserved = count
            batch = EpochBatch(**{name: array[:count].copy() for name, array in self._arrays.items()})
            remaining = self._size - count
            for array in self._arrays.values():
                array[:remaining] = array[count:self._size]
            self._size = remaining
        return batch

    def commit_epoch(self) -> None:
        """The taken epoch was trained on: release its reserved room."""
        with self._lock:
            self._reserved = 0

    def restore_epoch(self, batch: EpochBatch) -> None:
        """Put the taken epoch back at the front (after a failed update), so no step is lost.
        It always fits: its room was reserved."""
        with self._lock:
            count = batch.size
            for name, array in self._arrays.items():
                array[count:count + self._size] = array[:self._size].copy()
                array[:count] = getattr(batch, name)
            self._size += count
            self._reserved = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The held steps (collected, not yet trained), for checkpoints."""
        with self._lock:
            return {name: torch.from_numpy(array[:self._size].copy())
                    for name, array in self._arrays.items()}

    def counters(self) -> dict[str, Any]:
        """The buffer's own counters, for checkpoints: the steps it dropped as stale and the
        names its ``sources`` column indexes."""
        with self._lock:
            return {"steps_dropped_stale": self.steps_dropped_stale,
                    "sources": list(self.source_names)}

    def load_counters(self, counters: Mapping[str, Any]) -> None:
        """The counters of a checkpoint (``counters``; ``sources`` may be missing in old ones)."""
        self.steps_dropped_stale = int(counters["steps_dropped_stale"])
        if "sources" in counters:
            self.load_sources(counters["sources"])

    def load_sources(self, names: list[str]) -> None:
        """The source names a checkpoint's ``sources`` column indexes."""
        with self._lock:
            self.source_names = [str(name) for name in names][:MAX_SOURCES]
            self._source_indices = {name: index for index, name in enumerate(self.source_names)}

    def load_state_dict(self, state: dict[str, torch.Tensor], grow: bool = False) -> None:
        """Replace the held steps with those of a checkpoint (``grow``: enlarge the buffer
        to hold them all if they do not fit).

        :raises ValueError: if the saved columns do not match this buffer.
        """
        held = len(state["advantages"]) if "advantages" in state else 0
        if "shaping_advantages" not in state:  # saved before shaping
            state = {**state, "shaping_advantages": torch.zeros(held)}
        if "sources" not in state:  # saved before sources: count them as in-process
            state = {**state, "sources": torch.zeros(held, dtype=torch.int16)}
        if "forced" not in state:  # saved before forced plies were marked: none
            state = {**state, "forced": torch.zeros(held, dtype=torch.bool)}
        if "search_actions" not in state:  # saved before search targets: none
            state = {**state, "search_actions": torch.full((held, TARGET_WIDTH), -1, dtype=torch.int16),
                     "search_probs": torch.zeros(held, TARGET_WIDTH)}
        sizes = {len(tensor) for tensor in state.values()}
        if set(state) != set(self._arrays) or len(sizes) != 1:
            raise ValueError(f"saved buffer has columns {sorted(state)} of sizes {sorted(sizes)}")
        size = sizes.pop()
        if size > self.capacity and not grow:
            raise ValueError(f"saved buffer holds {size} steps; capacity is {self.capacity}")
        with self._lock:
            if size > self.capacity:  # steps a run with fewer ranks takes over: room for all
                for name, array in list(self._arrays.items()):
                    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
                    grown[:self._size] = array[:self._size]
                    self._arrays[name] = grown
                self.capacity = size
            for name, array in self._arrays.items():
                array[:size] = state[name].numpy()
            self._size = size
