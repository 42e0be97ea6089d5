"""Admission: the one way a finished game enters the experience buffer.

Every game, whoever played it, comes in here: a remote or local actor's through
``receive`` (called by the server thread with the records a ``games`` message carried),
the learner's own in-process collector's through ``put`` (it is the collector's sink).
Both end in the same queue and the same ``flush``:

* **validation** where it applies: a peer's records are replayed through the rules
  (``keisei.records.replay_game``) and checked against the current policy version;
  the in-process collector's games come from the rules already and are trusted;
* **back-pressure**: games that do not fit in the buffer wait here, first in first out,
  and when more than the buffer's capacity waits, the oldest games from peers are
  dropped and counted (the in-process collector stops by itself once an epoch is
  buffered, so its few waiting games are never dropped);
* **the ledger**: every step is counted once as received (valid or not) and then as
  invalid, dropped for back-pressure, waiting here, or handed to the buffer.

One lock covers the queue, its counters and every ``ExperienceBuffer.put``, so no writer
can make another fail: ``BufferFullError`` is caught here and only ever means "wait".
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from keisei.errors import KeiseiError
from keisei.records import DRAW, FinishedGame, GameRecord, replay_game
from learner.buffer import IN_PROCESS, BufferFullError, ExperienceBuffer


class InvalidGames(KeiseiError, ValueError):
    """A peer's games failed validation; none of the message's games was admitted."""


@dataclass(frozen=True)
class AdmissionCounts:
    """Steps and games through admission since it started, read together."""

    games_received: int  # from peers, valid
    steps_received: int  # from peers, valid
    games_invalid: int
    steps_invalid: int
    steps_in_process: int  # from the learner's own collector
    steps_dropped_backpressure: int
    steps_pending: int  # received, waiting for room in the buffer
    steps_held: int  # in the buffer, including an epoch being trained on
    steps_dropped_stale: int  # by the buffer: older than ``train.max_policy_lag``
    games_in_process: int = 0  # from the learner's own collector


class Admission:
    """Validation, back-pressure and the ledger for every game (see the module docstring).

    ``policy_version`` reads the current version from its owner (the trainer); a peer's
    game that claims a newer one is invalid. ``max_plies`` and ``entering_king`` are the
    rules its games are replayed under, ``mate_search`` the mate search its players used
    (``selfplay.mate_search``: the replay finds their forced plies again), and
    ``search_plays`` whether they played the target search's moves (``selfplay.search_plays``).
    """

    def __init__(self, buffer: ExperienceBuffer, policy_version: Callable[[], int], *,
                 max_plies: int, entering_king: bool, mate_search: int = 0,
                 search_plays: bool = False) -> None:
        self.buffer = buffer
        self.policy_version = policy_version
        self.max_plies = max_plies
        self.entering_king = entering_king
        self.mate_search = mate_search
        self.search_plays = search_plays
        self._pending: deque[tuple[FinishedGame, str]] = deque()  # (game, source)
        self._pending_steps = 0
        self._games_received = 0
        self._steps_received = 0
        self._games_invalid = 0
        self._steps_invalid = 0
        self._steps_in_process = 0
        self._games_in_process = 0
        self._steps_dropped_backpressure = 0
        self.games_carried = 0  # admitted before this process: the resumed checkpoint's total
        self.pool_result: Callable[[str, float], None] | None = None
        """Told each admitted pool game of a peer: its opponent and the learner's score."""
        self._lock = threading.Lock()

    # --- the two ways in ---------------------------------------------------------------
    def receive(self, records: Sequence[GameRecord], source: str) -> list[FinishedGame]:
        """Validate a peer's ``records`` and queue them for the buffer; return the games.

        :raises InvalidGames: if any record is not a legal game with a true result under
            this learner's rules, or claims a policy version newer than the current one;
            then none is admitted, and all its steps are counted invalid.
        """
        try:
            current = self.policy_version()
            future = [int(record.policy_versions.max()) for record in records
                      if record.length and record.policy_versions.max() > current]
            if future:
                raise ValueError(f"policy version {max(future)} is newer than the learner's {current}")
            games = [replay_game(record, self.max_plies, self.entering_king, self.mate_search,
                                 self.search_plays)
                     for record in records]
        except (KeiseiError, ValueError) as exc:
            with self._lock:
                self._games_invalid += len(records)
                self._steps_invalid += sum(record.length for record in records)
            raise InvalidGames(str(exc)) from exc
        with self._lock:
            self._games_received += len(games)
            self._steps_received += sum(game.steps for game in games)  # an opponent's plies
            self._enqueue(games, source)  # are no steps (a pool game's)
        if self.pool_result is not None:
            for game in games:
                if game.opponent:
                    self.pool_result(game.opponent, 0.5 if game.winner == DRAW
                                     else float(game.winner == game.learner_side))
        return games

    def put(self, game: FinishedGame) -> None:
        """Queue a game of the learner's own collector (its sink); it never raises for room."""
        with self._lock:
            self._steps_in_process += game.steps  # an opponent's plies are no steps
            self._games_in_process += 1
            self._enqueue([game], IN_PROCESS)

    # --- moving games on ----------------------------------------------------------------
    def flush(self) -> None:
        """Move waiting games into the buffer while they fit (called by every writer, and
        by whoever frees room: the server thread each round, the trainer while collecting)."""
        with self._lock:
            self._flush()

    def _enqueue(self, games: Sequence[FinishedGame], source: str) -> None:
        self._pending.extend((game, source) for game in games)
        self._pending_steps += sum(game.steps for game in games)
        self._flush()

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            try:
                self.buffer.put(*pending[0])
            except BufferFullError:  # no room until the trainer takes an epoch: wait
                break
            self._pending_steps -= pending.popleft()[0].steps
        while self._pending_steps > self.buffer.capacity:
            oldest = next((index for index, (_, source) in enumerate(pending)
                           if source != IN_PROCESS), None)
            if oldest is None:
                break
            dropped, _ = pending[oldest]
            del pending[oldest]
            self._pending_steps -= dropped.steps
            self._steps_dropped_backpressure += dropped.steps

    # --- reading ------------------------------------------------------------------------
    def accepting(self) -> bool:
        """Whether actors should keep playing: the next epoch is not complete yet.

        Beyond that their games would only wait and grow stale; pausing them also hands
        the CPU to the PPO update when actors share the learner's machine.
        """
        return self.buffer.size + self._pending_steps < self.buffer.steps_per_epoch

    def counts(self) -> AdmissionCounts:
        """The counters, and the buffer's, read together: no game moves between two of
        them (every ``ExperienceBuffer.put`` happens under the same lock)."""
        with self._lock:
            return AdmissionCounts(self._games_received, self._steps_received, self._games_invalid,
                                   self._steps_invalid, self._steps_in_process,
                                   self._steps_dropped_backpressure, self._pending_steps,
                                   self.buffer.held(), self.buffer.steps_dropped_stale,
                                   self._games_in_process)

    def games_total(self) -> int:
        """Every valid game admitted in this run, from actors and in-process, this process's
        and (``games_carried``) those before the checkpoint it resumed from."""
        with self._lock:
            return self.games_carried + self._games_received + self._games_in_process
