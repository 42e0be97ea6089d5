"""The self-play collector: the only code in Keisei that plays training games.

``Collector(model, config, sink)`` plays ``config.games`` games in lock-step: each ply
it encodes every position at once, runs **one** forward pass for all of them, samples a
legal move per game, and records the ply into per-slot arrays (vectorised across games;
the only per-game Python work is ``Game.push``). A finished game is handed to
the sink (with its training data for the learner's buffer, as a bare wire record for an
actor) and a new game starts in its slot.

**Search targets** (``selfplay.search_share`` > 0): before a random share of the plies,
every game is also searched (``keisei.search``, ``selfplay.search_visits`` visits, all
those games' trees batched together, the Gumbel root with its noise) and the search's
completed-Q policy over the position's moves is recorded as that ply's training target (its
``TARGET_WIDTH`` likeliest moves, renormalised). The move played is still sampled from
the network, so the recorded behaviour log-probabilities stay exact for PPO. With
``selfplay.search_plays`` the search's move is played instead (the halving's winner,
which its Gumbel noise makes a sample): such a ply is marked forced, like a mate the mate
search played, so it stays out of the policy-gradient term and trains through its target.
In a pool game the opponent's plies are its own network's, searched or not.

The collector knows nothing of sockets, processes or the protocol: a remote actor passes
a sink that sends records to the learner, the learner's sequential fallback passes its
buffer. Records and their packing live in ``keisei.records``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from keisei.config import SearchConfig, SelfPlayConfig
from keisei.encoding import BatchEncoder, legal_actions, move_to_action
from keisei.model import autocast, choose_actions, masked_logits, resolve_precision, to_device
from keisei.pool import OpponentPool
from keisei.records import (
    DRAW,
    MASK_BYTES,
    OBSERVATION_BYTES,
    TARGET_WIDTH,
    FinishedGame,
    GameRecord,
    pack_masks,
    pack_observations,
)
from keisei.search import Search, SearchResult, network_evaluator
from keisei.shogi import Game, mating_move


@dataclass(frozen=True)
class WatchedGame:
    """The game in the collector's first slot as it stands after a ply (``Collector.watch``):
    ``values`` are the value head's, one per ply played, from the mover's view (``movers``:
    0 black, 1 white). ``number`` counts the games that slot has started. A game that
    ended on this ply is published once, with its ``result``, before the next one."""

    number: int
    start_sfen: str
    moves: tuple[int, ...]
    values: tuple[float, ...]
    movers: tuple[int, ...]
    result: str | None = None


class GameSink(Protocol):
    """Where finished games with their training data go: the learner's buffer."""

    def put(self, game: FinishedGame) -> object: ...


@runtime_checkable
class RecordSink(Protocol):
    """Where finished games go in wire form only: an actor's outbox. Handed one of these,
    the collector keeps no planes or masks (they would be thrown away)."""

    def put_record(self, record: GameRecord) -> None: ...


@dataclass
class CollectorStats:
    """Running totals since the collector started."""

    steps: int = 0
    games: int = 0
    forced_mates: int = 0
    encode_seconds: float = 0.0
    inference_seconds: float = 0.0
    rules_seconds: float = 0.0
    searches: int = 0  # positions searched for a target
    search_seconds: float = 0.0
    pool_games: int = 0  # finished against an opponent from the pool
    pool_score: float = 0.0  # the learner's points in them (1 a win, 0.5 a draw)


class Collector:
    """Plays ``config.games`` self-play games in lock-step with batched inference.

    ``sink`` takes finished games: a ``GameSink`` gets them with their training data, a
    ``RecordSink`` only their wire record. Whoever owns the weights in ``model`` passes
    their policy version to ``step``, which stamps it on every ply. ``search`` configures
    the search of ``config.search_share`` (default: ``SearchConfig()``).
    """

    def __init__(self, model: nn.Module, config: SelfPlayConfig, sink: GameSink | RecordSink, *,
                 device: str | torch.device = "cpu", seed: int = 0,
                 precision: str = "float32", search: SearchConfig | None = None) -> None:
        self.model = model
        self.config = config
        self.search_config = search if search is not None else SearchConfig()
        self.sink = sink
        self.device = torch.device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.stats = CollectorStats()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        slots, plies = config.games, config.max_plies
        self._games = [self._new_game() for _ in range(slots)]
        self._encoder = BatchEncoder(slots)
        self._ply = np.zeros(slots, dtype=np.int64)
        self._slots = np.arange(slots)
        training = not isinstance(sink, RecordSink)
        self._observations = np.zeros((slots, plies if training else 0, OBSERVATION_BYTES), np.uint8)
        self._masks = np.zeros((slots, plies if training else 0, MASK_BYTES), dtype=np.uint8)
        self._actions = np.zeros((slots, plies), dtype=np.int16)
        self._moves = np.zeros((slots, plies), dtype=np.int32)
        self._log_probs = np.zeros((slots, plies), dtype=np.float32)
        self._values = np.zeros((slots, plies), dtype=np.float32)
        self._players = np.zeros((slots, plies), dtype=np.uint8)
        self._versions = np.zeros((slots, plies), dtype=np.int32)
        self._forced = np.zeros((slots, plies), dtype=bool)
        self._rng = np.random.default_rng(seed)
        self.watch = False
        """When set, ``watched`` follows the first slot's game after every ply (a web view)."""
        self.watched: WatchedGame | None = None
        self._watched_number = 0
        self._search: Search | None = None
        self._searched_version = -1  # the weights the search's cache holds outputs of
        self._searched_actions: np.ndarray | None = None  # search_plays: this ply's moves
        # per slot, the targets of the game in it: (ply, moves, actions, probs, root value)
        self._targets: list[list[tuple[int, list[int], np.ndarray, np.ndarray, float]]] = \
            [[] for _ in range(slots)]
        self.pool: OpponentPool | None = None
        """Set with ``play_pool``: a share of new games is played against its opponents."""
        self._pool_share = 0.0
        self._opponent_models: dict[str, nn.Module] = {}
        self._build_opponent: Callable[[], nn.Module] | None = None
        self._opponents: list[str | None] = [None] * slots  # per slot, the opponent's name
        self._learner_sides = np.zeros(slots, dtype=np.int64)  # per slot, the learner's colour
        self._trained = np.ones((slots, plies), dtype=bool)

    def _new_game(self) -> Game:
        return Game(max_plies=self.config.max_plies, entering_king=self.config.entering_king)

    def play_pool(self, pool: OpponentPool, share: float, build: Callable[[], nn.Module]) -> None:
        """Play ``share`` of the games started from now on against an opponent drawn from
        ``pool`` (PFSP), the learner taking a random colour; ``build`` makes an empty
        network of the opponents' shape. The opponent's plies are recorded as not trained,
        and each result goes back to the pool."""
        if pool is not self.pool:
            self._opponent_models = {}  # another pool's opponents, whatever their names
        self.pool, self._pool_share, self._build_opponent = pool, share, build

    def _choose_opponent(self, slot: int) -> None:
        """Decide the new game in ``slot``: self-play, or a pool game and its sides."""
        self._opponents[slot] = None
        pool = self.pool
        if pool is None or not len(pool) or self._rng.random() >= self._pool_share:
            return
        self._opponents[slot] = pool.sample(self._rng).name
        self._learner_sides[slot] = int(self._rng.integers(2))

    def _opponent_model(self, name: str) -> nn.Module | None:
        """The opponent ``name``'s network (built once; ``None`` once it left the pool)."""
        model = self._opponent_models.get(name)
        if model is None:
            assert self.pool is not None and self._build_opponent is not None
            opponent = self.pool.get(name)
            if opponent is None:
                return None
            live = set(self.pool.names())  # forget the networks of those who left
            self._opponent_models = {key: value for key, value in self._opponent_models.items()
                                     if key in live}
            model = self._build_opponent().to(self.device)
            model.load_state_dict(opponent.weights)
            model.eval()
            self._opponent_models[name] = model
        return model

    def _opponent_moves(self, observations: np.ndarray, masks: np.ndarray,
                        forced: np.ndarray | None, actions: np.ndarray, log_probs: np.ndarray,
                        values: np.ndarray) -> np.ndarray:
        """Where a pool opponent is to move, its own network's move (in place); returns
        whether each slot's ply is the learner's."""
        learner = np.ones(len(self._games), dtype=bool)
        turns = np.array([game.board.turn for game in self._games])
        by_opponent: dict[str, list[int]] = {}
        for slot, name in enumerate(self._opponents):
            if name is not None and turns[slot] != self._learner_sides[slot]:
                by_opponent.setdefault(name, []).append(slot)
                learner[slot] = False
        for name, slots in by_opponent.items():
            model = self._opponent_model(name)
            if model is None:  # it left the pool mid-game: the learner's network plays its
                continue  # side from here, still not trained on
            rows = np.array(slots)
            chosen = self._infer(observations[rows], masks[rows],
                                 None if forced is None else forced[rows], model)
            actions[rows], log_probs[rows], values[rows] = chosen
        return learner

    def step(self, policy_version: int) -> int:
        """One ply in every game; finished games go to the sink. Returns how many finished."""
        if self.config.search_share > 0:
            self._search_targets(policy_version)
        started = time.perf_counter()
        observations, masks = self._encoder.encode(self._games)
        encoded = time.perf_counter()
        forced = self._mating_actions(masks) if self.config.mate_search else None
        searched = self._searched_actions
        self._searched_actions = None
        played = forced  # the moves not sampled: a mate first, else the search's move
        if searched is not None:
            played = searched if forced is None else np.where(forced >= 0, forced, searched)
        actions, log_probs, values = self._infer(observations, masks, played)
        learner = (np.ones(len(self._games), dtype=bool) if self.pool is None else
                   self._opponent_moves(observations, masks, forced, actions, log_probs, values))
        inferred = time.perf_counter()
        moves = self._encoder.moves_for(actions)
        self._record(observations, masks, actions, moves, log_probs, values, policy_version)
        self._trained[self._slots, self._ply - 1] = learner
        # a forced ply: the mate search or the target search played it, or it was the only
        # legal move (as keisei.records.replay_game finds them again)
        only_move = masks.sum(axis=1) == 1
        self._forced[self._slots, self._ply - 1] = only_move if played is None \
            else only_move | (played >= 0)
        finished = 0
        for slot, (game, move) in enumerate(zip(self._games, moves.tolist(), strict=True)):
            game.push(move)
            if game.outcome is not None:
                if slot == 0:  # the watched slot: its end is shown before the next game
                    if self.watch:
                        self._publish_watched(str(game.outcome))
                    self._watched_number += 1
                self._finish(slot)
                finished += 1
        if self.watch and self._ply[0]:  # (a ply of 0: the end just published stays)
            self._publish_watched()
        done = time.perf_counter()
        stats = self.stats
        stats.steps += len(self._games)
        stats.encode_seconds += encoded - started
        stats.inference_seconds += inferred - encoded
        stats.rules_seconds += done - inferred
        return finished

    def _search_targets(self, policy_version: int) -> None:
        """On a random ``search_share`` of the plies, search every game together and keep
        each one's improved policy as the target of the ply about to be played. All the
        games at once, rather than a share of them on every ply: each network call then
        carries ``selfplay.games`` positions, where a few positions a call would leave
        the network mostly idle (measured: about twice the cost for the same targets)."""
        if self._rng.random() >= self.config.search_share:
            return
        started = time.perf_counter()
        if self._search is None:
            evaluate = network_evaluator(self.model, self.device, self.autocast_dtype)
            # the Gumbel root at any budget: its completed-Q policy is the target
            gumbel = replace(self.search_config, gumbel_visits=max(
                self.search_config.gumbel_visits, self.config.search_visits))
            self._search = Search(evaluate, gumbel, noise=True, seed=int(self._rng.integers(2**31)))
        if policy_version != self._searched_version:  # outputs of older weights
            self._search.cache.clear()
            self._searched_version = policy_version
        results = self._search.search(self._games, visits=self.config.search_visits)
        for slot, (game, result) in enumerate(zip(self._games, results, strict=True)):
            self._targets[slot].append((int(self._ply[slot]), *_target(game, result)))
        if self.config.search_plays:  # the next ply plays the search's moves
            self._searched_actions = np.array(
                [move_to_action(game.board, result.move) for game, result
                 in zip(self._games, results, strict=True)], dtype=np.int64)
        self.stats.searches += len(self._games)
        self.stats.search_seconds += time.perf_counter() - started

    def _mating_actions(self, masks: np.ndarray) -> np.ndarray:
        """Per game, the action of the first move of a legal forced mate within
        ``config.mate_search`` plies (``keisei.shogi.mating_move``, about 2 µs at 3
        plies), else -1."""
        forced = np.full(len(self._games), -1, dtype=np.int64)
        for slot, game in enumerate(self._games):
            move = mating_move(game, self.config.mate_search)
            if move is not None:
                action = move_to_action(game.board, move)
                if masks[slot, action]:
                    forced[slot] = action
        self.stats.forced_mates += int((forced >= 0).sum())
        return forced

    def _infer(self, observations: np.ndarray, masks: np.ndarray, forced: np.ndarray | None,
               model: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample a move per game with ``model`` (default: the collector's); where
        ``forced`` holds an action (not -1), play it instead, with the network's
        log-probability of it at the sampling temperature."""
        temperature = self.config.temperature
        with torch.inference_mode(), autocast(self.device, self.autocast_dtype):
            inputs = to_device(observations, self.device)
            legal = to_device(masks, self.device)
            logits, values = (self.model if model is None else model)(inputs)
            masked = masked_logits(logits, legal)
            uniforms = torch.rand(len(masked), generator=self.generator, device=self.device)
            actions, log_probs = choose_actions(masked, temperature, uniforms)
            if forced is not None and bool((forced >= 0).any()):
                chosen = to_device(forced, self.device)
                use = chosen >= 0
                actions = torch.where(use, chosen, actions)
                all_log_probs = torch.log_softmax(masked.float() / temperature, dim=-1)
                log_probs = torch.where(use, all_log_probs.gather(1, actions[:, None]).squeeze(1),
                                        log_probs)
        return actions.cpu().numpy(), log_probs.cpu().numpy(), values.float().cpu().numpy()

    def _record(self, observations: np.ndarray, masks: np.ndarray, actions: np.ndarray,
                moves: np.ndarray, log_probs: np.ndarray, values: np.ndarray,
                policy_version: int) -> None:
        slots, plies = self._slots, self._ply
        if self._observations.shape[1]:  # training data kept (a GameSink)
            self._observations[slots, plies] = pack_observations(observations)
            self._masks[slots, plies] = pack_masks(masks)
        self._actions[slots, plies] = actions
        self._moves[slots, plies] = moves
        self._log_probs[slots, plies] = log_probs
        self._values[slots, plies] = values
        self._players[slots, plies] = [game.board.turn for game in self._games]
        self._versions[slots, plies] = policy_version
        self._ply += 1

    def _finish(self, slot: int) -> None:
        game = self._games[slot]
        outcome = game.outcome
        assert outcome is not None  # only finished games reach here
        length = int(self._ply[slot])
        targets = self._targets[slot]
        record = GameRecord(game.start_sfen, DRAW if outcome.winner is None else outcome.winner.number,
                            outcome.reason, self._moves[slot, :length].copy(),
                            self._log_probs[slot, :length].copy(), self._values[slot, :length].copy(),
                            self._versions[slot, :length].copy(),
                            target_plies=np.array([item[0] for item in targets], dtype=np.int32),
                            target_counts=np.array([len(item[1]) for item in targets], dtype=np.int32),
                            target_moves=np.array([move for item in targets for move in item[1]],
                                                  dtype=np.int32),
                            target_probs=np.concatenate([item[3] for item in targets]
                                                        or [np.zeros(0, np.float32)]),
                            target_values=np.array([item[4] for item in targets], dtype=np.float32))
        target_actions = np.concatenate([item[2] for item in targets] or [np.zeros(0, np.int16)])
        self.stats.games += 1
        opponent = self._opponents[slot]
        trained = None
        if opponent is not None:
            record = replace(record, opponent=opponent, learner_side=int(self._learner_sides[slot]))
            trained = self._trained[slot, :length].copy()
            side = int(self._learner_sides[slot])
            score = 0.5 if outcome.winner is None else float(outcome.winner.number == side)
            assert self.pool is not None
            self.pool.record(opponent, score)
            self.stats.pool_games += 1
            self.stats.pool_score += score
        self._games[slot] = self._new_game()
        self._ply[slot] = 0
        self._targets[slot] = []
        self._choose_opponent(slot)
        if isinstance(self.sink, RecordSink):
            self.sink.put_record(record)
            return
        self.sink.put(FinishedGame(**vars(record), observations=self._observations[slot, :length].copy(),
                                   legal_masks=self._masks[slot, :length].copy(),
                                   actions=self._actions[slot, :length].copy(),
                                   players=self._players[slot, :length].copy(),
                                   target_actions=target_actions.astype(np.int16),
                                   forced=self._forced[slot, :length].copy(), trained=trained))

    def _publish_watched(self, result: str | None = None) -> None:
        """Replace ``watched`` (a reference swap: a reader never waits for the collector)."""
        plies = int(self._ply[0])
        self.watched = WatchedGame(self._watched_number, self._games[0].start_sfen,
                                   tuple(self._moves[0, :plies].tolist()),
                                   tuple(self._values[0, :plies].tolist()),
                                   tuple(self._players[0, :plies].tolist()), result)

    def discard_in_flight(self) -> int:
        """Abandon every unfinished game (new ones start); return the plies dropped."""
        dropped = self.in_flight_steps()
        self._games = [self._new_game() for _ in self._games]
        self._ply[:] = 0
        self._targets = [[] for _ in self._games]
        for slot in range(len(self._games)):
            self._choose_opponent(slot)
        self._watched_number += 1
        return dropped

    def in_flight_steps(self) -> int:
        """Plies recorded in games not finished yet (lost if the collector is dropped)."""
        return int(self._ply.sum())


def _target(game: Game, result: SearchResult) -> tuple[list[int], np.ndarray, np.ndarray, float]:
    """A search result as a training target: the ``TARGET_WIDTH`` likeliest moves of its
    improved policy (none of zero probability), their action indices and probabilities
    (renormalised, float32), and the root value."""
    order = np.argsort(-result.policy, kind="stable")[:TARGET_WIDTH]
    order = order[result.policy[order] > 0]
    moves = [result.moves[index] for index in order.tolist()]
    probs = result.policy[order].astype(np.float64)
    probs = (probs / probs.sum()).astype(np.float32)
    actions = legal_actions(game.board, moves).astype(np.int16)
    return moves, actions, probs, float(np.clip(result.value, -1.0, 1.0))
