"""The training loop: collect → update → publish → callbacks, and nothing else.

``Trainer.collect()`` fills the buffer with one epoch of steps, ``Trainer.update()`` runs
PPO on it, ``Trainer.publish()`` makes the updated weights the next policy version and
sends them to whoever broadcasts them (``weights_out``: the server, when actors are
wired in). ``train()`` is the one loop;
callbacks (the learner's epoch handler, or a test's) receive each epoch's
``EpochReport`` and may be plain functions or coroutines: ``call_callback`` awaits a
result only when it is awaitable, inside the single event loop that
``asyncio.run(train(...))`` starts.

The trainer owns the policy version: the buffer and the server read it, the collector
receives it with each step. It reads the collection mode from whoever owns that (the
supervisor, when actors are wired in).
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from keisei.config import Config, ConfigError
from keisei.dataset import (
    DatasetError,
    EndlessBatches,
    RecordFolder,
    decode_samples,
    endless_batches,
)
from keisei.errors import KeiseiError
from keisei.evaluation import PolicyPlayer, load_openings, play_match
from keisei.evaluation import tally as match_tally
from keisei.model import (
    PolicyValueNet,
    autocast,
    build_model,
    log_probs_and_entropy,
    masked_logits,
    resolve_precision,
    supervised_losses,
    supervised_tensors,
    to_device,
)
from keisei.pool import OpponentPool
from keisei.ppo import (
    explained_variance_of,
    init_kl_coef_at,
    kl_from_reference,
    learning_rate_at,
    ppo_losses,
    search_cross_entropy,
    shaping_weight,
    variance_moments,
)
from keisei.records import unpack_masks, unpack_observations
from keisei.runs import resolve_device
from keisei.selfplay import Collector
from learner.admission import Admission
from learner.buffer import EpochBatch, ExperienceBuffer, GameTally
from learner.ranks import Alone, RankFailed, World, check_divisible
from learner.reports import (
    AnchorReport,
    CollectReport,
    EpochReport,
    GamesReport,
    Mode,
    PoolReport,
    UpdateReport,
)

logger = logging.getLogger(__name__)


START_OPPONENT = "start"
"""The pool's name for the network an ``--init-from`` run started from (always kept)."""


class TrainingInterrupted(KeiseiError):
    """A stop was requested (SIGINT/SIGTERM); raised at the next safe point."""


class NonFiniteUpdate(KeiseiError, FloatingPointError):
    """A minibatch made the loss or the gradient non-finite."""


class EpochDropped(KeiseiError):
    """An epoch was discarded untrained (its update went non-finite); training goes on."""

Callback = Callable[[EpochReport], "Awaitable[None] | None"]


class Trainer:
    """Owns the model, optimizer, schedule, counters and policy version, and the buffer
    and in-process collector that feed it. ``mode`` says where games come from.

    ``world`` (``learner.ranks``) is the processes training the network together: a
    single process is a world of one. The buffer is this member's shard: it trains
    ``train.steps_per_epoch / N`` steps an epoch in minibatches of
    ``train.minibatch_size / N``, and ``step`` counts the steps of all members
    (``steps_trained_here``: this one's)."""

    def __init__(self, config: Config, model: PolicyValueNet, device: torch.device,
                 stop: threading.Event | None = None,
                 mode: Callable[[], Mode] = lambda: Mode.SEQUENTIAL,
                 world: World | None = None) -> None:
        self.config = config
        self.stop = stop if stop is not None else threading.Event()
        self.model = model
        self.device = device
        self.mode = mode
        self.world = world = world if world is not None else Alone()
        selfplay, train = config.selfplay, config.train
        check_divisible(train.steps_per_epoch, train.minibatch_size, world.size)
        shard = train.steps_per_epoch // world.size
        self.minibatch_size = train.minibatch_size // world.size
        world.synchronise(model)
        # Room for two epochs plus every game the collector can finish while filling one,
        # so actors' games keep arriving during an update.
        capacity = 2 * shard + selfplay.games * selfplay.max_plies
        self.buffer = ExperienceBuffer(shard, capacity, gamma=train.gamma,
                                       gae_lambda=train.gae_lambda,
                                       max_policy_lag=train.max_policy_lag,
                                       policy_version=lambda: self.policy_version,
                                       shaping=train.shaping_scale > 0,
                                       shaping_lambda=train.shaping_lambda,
                                       value_lambda=(train.gae_lambda if train.value_lambda < 0
                                                     else train.value_lambda),
                                       search_value_mix=train.search_value_mix,
                                       draw_reward=-train.draw_penalty,
                                       value_material_mix=train.value_material_mix,
                                       value_material_scale=train.value_material_scale)
        # every game reaches the buffer through admission, the in-process collector's too
        self.admission = Admission(self.buffer, lambda: self.policy_version,
                                   max_plies=selfplay.max_plies, entering_king=selfplay.entering_king,
                                   mate_search=selfplay.mate_search,
                                   search_plays=selfplay.search_plays)
        # every rank plays its own games: the same seed would play the same ones
        self.collector = Collector(model, selfplay, self.admission, device=device,
                                   seed=config.run.seed + 1_000_003 * world.rank,
                                   precision=config.run.precision)
        # fused: one kernel for all parameters instead of one per tensor (~1 ms per step here)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate,
                                           weight_decay=train.weight_decay, fused=True)
        total_updates = max(1, train.total_steps // train.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda update: learning_rate_at(train.lr_schedule, 1.0, update / total_updates))
        self.autocast_dtype = resolve_precision(config.run.precision, device)
        # float16 needs loss scaling against underflow; bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.shuffle_rng = np.random.default_rng(config.run.seed + 1 + 1_000_003 * world.rank)
        # engine-game positions trained beside self-play's (train.supervised_data)
        self.supervised: Iterator[np.ndarray] | None = None
        if train.supervised_data:
            try:
                self.supervised = endless_batches(
                    train.supervised_data, train.supervised_batch,
                    np.random.default_rng(config.run.seed + 2 + 1_000_003 * world.rank))
            except DatasetError as exc:
                raise ConfigError([f"train.supervised_data = {train.supervised_data!r}: {exc}"]) from exc
        # engine games a keisei-generate beside the learner keeps adding (train.supervised_records)
        self.supervised_records: RecordFolder | None = None
        self.records_rng = np.random.default_rng(config.run.seed + 3 + 1_000_003 * world.rank)
        self.records_ready = False  # every member has read some: minibatches draw from them
        if train.supervised_records:
            try:
                self.supervised_records = RecordFolder(
                    train.supervised_records, val_fraction=config.pretrain.val_fraction,
                    max_duplicates=config.pretrain.max_duplicates)
            except DatasetError as exc:
                raise ConfigError([f"train.supervised_records = {train.supervised_records!r}: "
                                   f"{exc}"]) from exc
        self.step = 0
        self.steps_trained_here = 0
        self.epoch = 0
        self.policy_version = 0
        self.processing = False  # true only while an update runs; reset in finally
        self.in_flight_steps_discarded = 0
        self.steps_dropped_non_finite = 0
        self.train_seconds = 0.0  # wall-clock of the epochs trained, across resumes
        # the KL penalty's anchor: the initial policy of an --init-from run, or with
        # train.kl_anchor = gated the last policy that passed a gate
        self.reference: PolicyValueNet | None = None
        self.anchor_version = 0  # the policy version the anchor is (0: the start)
        self.pool: OpponentPool | None = None  # past policies (pool.share > 0)
        if config.pool.share > 0:
            self.pool = OpponentPool(config.pool.size, config.pool.power)
            self.collector.play_pool(self.pool, config.pool.share,
                                     lambda: build_model(config.model))
        self._pool_counted = (0, 0.0)  # the pool games and score last reported
        self._peer_pool_games, self._peer_pool_score = 0, 0.0  # actors' pool games admitted
        # and the learner's score in them
        self._peer_pool_lock = threading.Lock()
        # where published weights go (policy version, state dict); none when sequential only
        self.weights_out: Callable[[int, dict[str, torch.Tensor]], None] | None = None
        # where the opponent pool is published beside them (the pool, pool.share), for actors
        self.pool_out: Callable[[OpponentPool, float], None] | None = None
        # torch threads the update should use now, asked before each minibatch (the
        # learner's local actors play or pause: ``learner.app.follow_actors``); None: the
        # number set at start stays
        self.threads: Callable[[], int] | None = None

    @classmethod
    def build(cls, config: Config, stop: threading.Event | None = None, threads: int | None = None,
              mode: Callable[[], Mode] = lambda: Mode.SEQUENTIAL,
              world: World | None = None) -> Trainer:
        """A trainer for ``config``: device checked, seeds set, network built.

        ``threads`` (torch CPU threads) defaults to ``run.threads``, or all cores.

        :raises ConfigError: if the device or precision cannot be used here.
        """
        device, _ = resolve_device(config)
        torch.set_num_threads(threads or config.run.threads or os.cpu_count() or 1)
        random.seed(config.run.seed)
        np.random.seed(config.run.seed % 2**32)
        torch.manual_seed(config.run.seed)
        return cls(config, build_model(config.model).to(device), device, stop, mode, world)

    def set_reference(self, weights: dict[str, Any]) -> None:
        """Start from ``weights`` (a pre-trained network) and keep a frozen copy of them
        as the reference policy of the ``train.init_kl_coef`` penalty.

        :raises RuntimeError: if the weights do not fit the configured network.
        """
        self.model.load_state_dict(weights)
        self.hold_anchor(weights)
        if self.pool is not None:
            self.pool.add(START_OPPONENT, weights, pinned=True)

    def hold_anchor(self, weights: dict[str, Any]) -> None:
        """Make a frozen copy of ``weights`` the KL penalty's anchor (``reference``)."""
        reference = build_model(self.config.model).to(self.device)
        reference.load_state_dict(weights)
        reference.eval()
        reference.requires_grad_(False)
        self.reference = reference

    def time_up(self) -> bool:
        """Whether ``train.minutes`` (when set) of training have passed, across resumes."""
        minutes = self.config.train.minutes
        return bool(minutes) and self.train_seconds >= 60 * minutes

    def gate_anchor(self) -> AnchorReport | None:
        """With ``train.kl_anchor = gated`` (else None): every ``anchor_every_epochs``
        epochs, the current policy plays the anchor (both their most probable moves,
        ``anchor_gate_games`` games in colour-swapped pairs, a new stretch of the shipped
        openings each gate) and becomes the anchor if it scores at least
        ``anchor_gate_score``. With ranks every member plays the same games on the same
        weights, and they decide on their mean score, so their anchors stay equal."""
        train = self.config.train
        if train.kl_anchor != "gated" or self.reference is None:
            return None
        if self.epoch % train.anchor_every_epochs:
            return AnchorReport(self.anchor_version, math.nan, 0, False)
        self._follow_threads()
        pairs = (train.anchor_gate_games + 1) // 2
        first = self.epoch // train.anchor_every_epochs * pairs
        policy = PolicyPlayer(copy.deepcopy(self.model), "policy", device=self.device,
                              autocast_dtype=self.autocast_dtype)
        anchor = PolicyPlayer(self.reference, "anchor", device=self.device,
                              autocast_dtype=self.autocast_dtype)
        result = match_tally(play_match(policy, anchor, load_openings(), range(first, first + pairs),
                                  seed=self.config.run.seed + self.epoch,
                                  max_plies=self.config.selfplay.max_plies))
        score = self.world.mean([result.score])[0]
        moved = score >= train.anchor_gate_score
        if moved:
            self.reference.load_state_dict(self.model.state_dict())
            self.anchor_version = self.policy_version
        return AnchorReport(self.anchor_version, score, result.games, moved)

    # --- the three phases ---------------------------------------------------------------
    def collect(self) -> CollectReport:
        """Fill the buffer to one epoch: in-process self-play when sequential, otherwise
        wait for the games that actors stream in (received on the server thread)."""
        started = time.perf_counter()
        before = copy.copy(self.collector.stats)
        self.collector.model.eval()
        while not self.buffer.ready():
            if self.stop.is_set():
                break  # the members agree on stopping before the update (``train``)
            self.admission.flush()  # games that waited for the room the last update freed
            if self.buffer.ready():
                break
            if self.mode() is Mode.SEQUENTIAL:
                self._follow_threads()  # no actor plays: every core collects
                self.collector.step(self.policy_version)
                continue
            if self.collector.in_flight_steps():  # back to actors: drop half-played games
                self.in_flight_steps_discarded += self.collector.discard_in_flight()
            self.buffer.wait_until_ready(timeout=0.25)
        after = self.collector.stats
        return CollectReport(time.perf_counter() - started, after.steps - before.steps,
                             after.inference_seconds - before.inference_seconds,
                             after.encode_seconds - before.encode_seconds,
                             after.rules_seconds - before.rules_seconds)

    def update(self) -> UpdateReport:
        """One PPO update on the oldest epoch in the buffer.

        If it raises, the model, optimizer, schedule and buffer are put back exactly as
        they were before it started, the error is logged with context, and it propagates.
        An epoch whose update goes non-finite is the exception: it would fail again on
        every retry (and from every checkpoint holding it), so its steps are dropped and
        counted (``steps_dropped_non_finite``), its sources logged, the model and
        optimizer restored, and ``EpochDropped`` raised for the loop to carry on.
        """
        batch = self.buffer.take_epoch()
        snapshot = self._snapshot()
        self.processing = True
        started = time.perf_counter()
        try:
            figures = self._ppo(batch)
        except (TrainingInterrupted, RankFailed):  # said where it is handled
            self._restore(snapshot)
            self.buffer.restore_epoch(batch)
            raise
        except NonFiniteUpdate as exc:
            self._restore(snapshot)
            self.buffer.commit_epoch()  # the steps are gone: release their room
            self.steps_dropped_non_finite += batch.size
            sources = ", ".join(f"{name} {count}" for name, count in
                                sorted(self.buffer.sources_of(batch).items()))
            logger.error("epoch %d dropped untrained (%d steps; from %s): %s; model and "
                         "optimizer restored to their state before it", self.epoch + 1,
                         batch.size, sources, exc)
            raise EpochDropped(str(exc)) from exc
        except Exception:
            self._restore(snapshot)
            self.buffer.restore_epoch(batch)
            logger.exception("PPO update failed at epoch %d (step %d, policy version %d); "
                             "model, optimizer and buffer restored to their state before it",
                             self.epoch + 1, self.step, self.policy_version)
            raise
        finally:
            self.processing = False
        self.buffer.commit_epoch()
        self.scheduler.step()
        self.step += batch.size * self.world.size
        self.steps_trained_here += batch.size
        self.epoch += 1
        lag = self.policy_version - batch.policy_versions
        return UpdateReport(**figures, update_seconds=time.perf_counter() - started,
                            policy_lag_mean=float(lag.mean()), policy_lag_max=int(lag.max()))

    def publish(self, new_version: bool = True) -> None:
        """Make the model's weights the next policy version (``new_version``; otherwise
        send the current one again, e.g. at start-up) and hand them to ``weights_out``."""
        if new_version:
            self.policy_version += 1
            if self.pool is not None and self.epoch % self.config.pool.every_epochs == 0:
                self.pool.add(f"v{self.policy_version}", self.model.state_dict())
        if self.weights_out is not None:
            self.weights_out(self.policy_version, self.model.state_dict())
        if self.pool is not None and self.pool_out is not None:
            self.pool_out(self.pool, self.config.pool.share)

    def record_pool_game(self, opponent: str, score: float) -> None:
        """An actor's game against ``opponent`` from the pool was admitted: the learner's
        policy scored ``score`` (``Admission.pool_result``; the server thread calls it)."""
        if self.pool is None:
            return
        self.pool.record(opponent, score)
        with self._peer_pool_lock:
            self._peer_pool_games += 1
            self._peer_pool_score += score

    def pool_report(self) -> PoolReport | None:
        """The pool's part of the epoch: games against it since the last call (every
        member's), the learner's mean score in them, and this member's opponent table."""
        if self.pool is None:
            return None
        stats = self.collector.stats
        with self._peer_pool_lock:
            total_games = stats.pool_games + self._peer_pool_games
            total_score = stats.pool_score + self._peer_pool_score
        games, score = total_games - self._pool_counted[0], total_score - self._pool_counted[1]
        self._pool_counted = (total_games, total_score)
        games_all, score_all = self.world.sum([float(games), score])
        opponents, probabilities = self.pool.snapshot()
        table = [{"name": opponent.name, "games": opponent.games,
                  "win_rate": round(opponent.win_rate, 4), "probability": round(float(chance), 4)}
                 for opponent, chance in zip(opponents, probabilities, strict=True)]
        return PoolReport(len(opponents), round(games_all),
                          score_all / games_all if games_all else math.nan, table)

    def shard_state(self) -> dict[str, Any]:
        """This rank's part of a checkpoint: its waiting steps and its own counts."""
        counters = self.buffer.counters()
        return {"buffer": self.buffer.state_dict(), "sources": counters["sources"],
                "games": self.admission.games_total(), "stale": counters["steps_dropped_stale"],
                "non_finite": self.steps_dropped_non_finite}

    def reseed_rank(self) -> None:
        """After loading rank 0's checkpoint state: this rank's own random streams (the
        checkpoint's are rank 0's; the same ones would play the same games)."""
        if self.world.is_main:
            return
        seed = self.config.run.seed + 1_000_003 * self.world.rank + self.step
        self.collector.generator.manual_seed(seed)
        self.shuffle_rng = np.random.default_rng(seed + 1)
        if isinstance(self.supervised, EndlessBatches):  # a pass of this rank's own order
            self.supervised.reseed(np.random.default_rng(seed + 2))
        self.records_rng = np.random.default_rng(seed + 3)

    # --- PPO ----------------------------------------------------------------------------
    def _read_records(self) -> None:
        """Before an update: the games ``train.supervised_records`` gained since the last
        one. Its positions are drawn from only once every member has some, so that all
        members' minibatches carry the same terms."""
        records = self.supervised_records
        if records is None:
            return
        added = records.poll()
        if added:
            logger.info("engine games beside: %d more positions (%d games; %d in all)",
                        added, records.games, len(records))
        if not self.records_ready:
            self.records_ready = self.world.mean([float(len(records) > 0)])[0] == 1.0

    def _supervised_samples(self) -> np.ndarray | None:
        """One minibatch's engine positions trained beside self-play: from
        ``train.supervised_data``'s stream and the positions read from
        ``train.supervised_records``, in proportion to their sizes; None when neither has
        any."""
        size = self.config.train.supervised_batch
        records = self.supervised_records if self.records_ready else None
        if records is None:
            return next(self.supervised) if self.supervised is not None else None
        if self.supervised is None:
            return records.sample(size, self.records_rng)
        grown = int(self.records_rng.binomial(size, len(records) / self.supervised_positions()))
        parts = [next(self.supervised)[:size - grown]] if grown < size else []
        if grown:
            parts.append(records.sample(grown, self.records_rng))
        return np.concatenate(parts)

    def supervised_positions(self) -> int:
        """The engine positions trained beside self-play: the prepared data set's and those
        read from the record folder so far."""
        prepared = len(self.supervised.shards) if isinstance(self.supervised, EndlessBatches) else 0
        return prepared + (len(self.supervised_records) if self.supervised_records else 0)

    def _ppo(self, batch: EpochBatch) -> dict[str, Any]:
        train = self.config.train
        minibatch = self.minibatch_size
        batches_per_pass = batch.size // minibatch
        sums: dict[str, float] = {}
        count = 0
        passes = 0
        search_sum, search_count = 0.0, 0
        weight = shaping_weight(train.shaping_scale, train.shaping_anneal_steps, self.step)
        kl_coef = (init_kl_coef_at(train.init_kl_coef, train.init_kl_steps, self.step)
                   if self.reference is not None else 0.0)
        epoch_statistics = train.norm_statistics == "epoch"
        if train.norm_statistics != "minibatch":
            self._set_norm_statistics(batch)
        self._read_records()
        pre_update = self._policy_log_probs(batch)  # once per epoch: the exact KL's reference
        self.model.train(not epoch_statistics)  # epoch statistics: train the acting policy
        while passes < train.ppo_passes:
            passes += 1
            order = self.shuffle_rng.permutation(batch.size)
            pass_kl = 0.0
            for start in range(0, batches_per_pass * minibatch, minibatch):
                self._follow_threads()
                rows = order[start:start + minibatch]
                losses, grad_norm = self._minibatch_step(
                    batch, rows, weight, kl_coef, pre_update[torch.from_numpy(rows)],
                    train_value=not train.value_passes or passes <= train.value_passes)
                pass_kl += losses["exact_kl"] / batches_per_pass
                search_loss = losses.pop("search_loss")
                if math.isfinite(search_loss):  # a minibatch without targets has none
                    search_sum += search_loss
                    search_count += 1
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + value
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                count += 1
            if train.target_kl and self.world.mean([pass_kl])[0] > train.target_kl:
                break  # together, on the pass's mean exact KL over the members
        if train.norm_statistics == "refresh":  # the statistics of the weights that will act
            self._set_norm_statistics(batch)
        names = sorted(sums)
        means = [sums[key] / count for key in names]
        # the figures of the whole update: means over the members (their shards are equal),
        # the explained variance of all members' steps together
        *means, search_mean, count_mean, targets_mean, r1, r2, e1, e2 = self.world.mean(
            [*means, search_sum, search_count, int((batch.search_probs.sum(axis=1) > 0).sum()),
             *variance_moments(batch.values, batch.returns)])
        variance = explained_variance_of(r1, r2, e1, e2)
        size = self.world.size
        search_sum, search_count = search_mean * size, round(count_mean * size)
        targets = round(targets_mean * size)
        figures: dict[str, Any] = dict(zip(names, means, strict=True))
        figures.update(ppo_passes=passes, learning_rate=self.optimizer.param_groups[0]["lr"],
                       shaping_weight=weight, init_kl_coef=kl_coef, explained_variance=variance,
                       search_loss=search_sum / search_count if search_count else math.nan,
                       search_targets=targets, supervised_positions=self.supervised_positions())
        return figures

    @torch.no_grad()
    def _set_norm_statistics(self, batch: EpochBatch) -> None:
        """Make every batch norm's running statistics those of this epoch's positions (with
        ranks: of every member's), the average of their minibatch-sized chunks' statistics
        in a shuffled order. Forward passes only: no random number is drawn but the order."""
        layers = [module for module in self.model.modules()
                  if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
        if not layers:
            return
        momenta = [layer.momentum for layer in layers]
        chunks = batch.size // self.minibatch_size  # whole minibatches (check_divisible)
        order = self.shuffle_rng.permutation(batch.size)[:chunks * self.minibatch_size]
        self.model.train()
        try:
            for chunk, rows in enumerate(order.reshape(chunks, self.minibatch_size)):
                for layer in layers:
                    layer.momentum = 1.0 / (chunk + 1)  # the running average of the chunks
                observations = to_device(unpack_observations(batch.observations[rows]), self.device)
                with autocast(self.device, self.autocast_dtype):
                    self.model(observations.float())
        finally:
            for layer, momentum in zip(layers, momenta, strict=True):
                layer.momentum = momentum

    @torch.no_grad()
    def _policy_log_probs(self, batch: EpochBatch) -> torch.Tensor:
        """The policy's log-probabilities over every position's legal moves (illegal ones
        -inf), as it acts (evaluation mode), in minibatch-sized chunks."""
        self.model.eval()
        parts = []
        for start in range(0, batch.size, self.minibatch_size):
            self._follow_threads()
            rows = slice(start, start + self.minibatch_size)
            observations = to_device(unpack_observations(batch.observations[rows]), self.device)
            legal = to_device(unpack_masks(batch.legal_masks[rows]), self.device)
            with autocast(self.device, self.autocast_dtype):
                logits, _ = self.model(observations.float())
            parts.append(torch.log_softmax(masked_logits(logits.float(), legal), dim=-1))
        return torch.cat(parts)

    def _follow_threads(self) -> None:
        """Set torch's thread count to what ``threads`` says now (a call costs
        microseconds; the thread pool is kept)."""
        if self.threads is not None:
            wanted = self.threads()
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)

    def _minibatch_step(self, batch: EpochBatch, rows: np.ndarray, shaping: float,
                        kl_coef: float, pre_update: torch.Tensor, *,
                        train_value: bool = True) -> tuple[dict[str, float], float]:
        """One gradient step. ``shaping`` weighs the shaping part of the advantages; the
        value still learns the unshaped returns (the game's result), so it stays an
        estimate of winning (keisei-usi resigns by it). ``kl_coef`` weighs the penalty
        KL(reference || policy) over each position's legal moves. ``pre_update`` holds the
        rows' log-probabilities before the update, for the exact KL from them. Without
        ``train_value`` the value's losses are measured but move nothing (the value head
        gets no gradient, so the optimizer leaves it as it is: ``train.value_passes``)."""
        train = self.config.train
        device = self.device
        tensors = {name: to_device(getattr(batch, name)[rows], device)
                   for name in ("actions", "log_probs", "values", "returns")}
        advantages = batch.advantages[rows] + shaping * batch.shaping_advantages[rows]
        chosen = ~batch.forced[rows]  # a forced ply stays out of the policy-gradient term
        if train.normalize_advantages:  # over the whole minibatch, every member's rows
            advantages = self._normalise(advantages, chosen)
        observations = to_device(unpack_observations(batch.observations[rows]), device)
        legal = to_device(unpack_masks(batch.legal_masks[rows]), device)
        inputs = observations.float()
        supervised = None
        samples = self._supervised_samples()
        if samples is not None:  # one forward pass for both kinds of position
            supervised = supervised_tensors(decode_samples(samples), device)
            inputs = torch.cat([inputs, supervised["observations"]])
        with autocast(device, self.autocast_dtype):
            logits, prior_logits, new_values = self.model.heads(inputs)
        if not train_value:
            new_values = new_values.detach()
        if supervised is not None:
            logits, supervised_logits = logits[:len(rows)], logits[len(rows):]
            new_values, supervised_values = new_values[:len(rows)], new_values[len(rows):]
        log_probs, entropy = log_probs_and_entropy(masked_logits(logits.float(), legal))
        new_log_probs = log_probs.gather(1, tensors["actions"][:, None]).squeeze(1)
        proximal = (pre_update.gather(1, tensors["actions"][:, None]).squeeze(1)
                    if train.decoupled_clip else None)
        losses = ppo_losses(new_log_probs, tensors["log_probs"], to_device(advantages, device),
                            new_values.float(), tensors["values"], tensors["returns"], entropy,
                            clip_coef=train.clip_coef, clip_value_loss=train.clip_value_loss,
                            vf_coef=train.vf_coef, ent_coef=train.ent_coef,
                            normalize_advantages=False, dual_clip=train.dual_clip,
                            policy_mask=to_device(chosen, device),
                            proximal_log_probs=proximal, behaviour_weight_cap=train.behaviour_weight_cap)
        loss = losses.loss
        init_kl = torch.full((), math.nan)  # measured only while the penalty is on
        value_anchor = torch.full((), math.nan)  # likewise
        value_coef = train.value_anchor_coef
        if self.reference is not None and (kl_coef > 0 or value_coef > 0):
            with torch.no_grad(), autocast(device, self.autocast_dtype):
                reference_logits, reference_values = self.reference(observations.float())
            if kl_coef > 0:
                reference_log_probs = torch.log_softmax(
                    masked_logits(reference_logits.float(), legal), dim=-1)
                init_kl = kl_from_reference(log_probs, reference_log_probs).mean()
                loss = loss + kl_coef * init_kl
            if value_coef > 0:
                value_anchor = torch.square(new_values.float() - reference_values.float()).mean()
                loss = loss + value_coef * value_anchor
        exact_kl = kl_from_reference(log_probs.detach(), pre_update).mean()
        search_probs = batch.search_probs[rows]
        targets = int((search_probs.sum(axis=1) > 0).sum())
        search_loss = torch.full((), math.nan)  # measured only where there are targets
        if targets:
            cross_entropy = search_cross_entropy(
                log_probs, to_device(batch.search_actions[rows], device),
                to_device(search_probs, device))
            search_loss = cross_entropy.sum() / targets
            loss = loss + train.search_coef * cross_entropy.sum() / len(rows)
        figures = {"init_kl": init_kl, "search_loss": search_loss, "exact_kl": exact_kl,
                   "value_anchor": value_anchor}
        if supervised is not None:
            policy_part, value_part, hits, known = supervised_losses(
                supervised_logits, supervised_values, supervised)
            figures["supervised_loss"] = policy_part.mean()
            figures["supervised_value_loss"] = value_part.sum() / known.sum().clamp(min=1.0)
            figures["supervised_accuracy"] = hits.mean()
            loss = loss + train.supervised_coef * (
                figures["supervised_loss"] + train.vf_coef * figures["supervised_value_loss"])
            if prior_logits is not None:  # the search's prior learns the engine's moves only
                prior_part, _, prior_hits, _ = supervised_losses(
                    prior_logits[len(rows):], supervised_values, supervised)
                figures["prior_loss"] = prior_part.mean()
                figures["prior_accuracy"] = prior_hits.mean()
                loss = loss + train.supervised_coef * figures["prior_loss"]
        # backward always (the synchronised batch norm meets the other members there),
        # then the gradients averaged over the members with the agreed verdicts on
        # finiteness and on stopping, then the same clipped step on every member
        finite = bool(torch.isfinite(loss))
        self.optimizer.zero_grad(set_to_none=True)
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        scaled = self.scaler.scale(loss) if self.scaler.is_enabled() else loss
        scaled.backward()  # type: ignore[no-untyped-call]
        verdict = self.world.reduce_gradients(parameters, finite, self.stop.is_set())
        if not verdict.finite:
            here = (f"PPO loss is {float(losses.loss.detach())} (policy "
                    f"{float(losses.policy_loss.detach())}, value {float(losses.value_loss.detach())})")
            raise NonFiniteUpdate(here if finite or self.world.size == 1 else
                                  f"the PPO loss is not finite on another rank (here {here})")
        if verdict.stop:
            raise TrainingInterrupted(f"stop requested at step {self.step}")
        return self._step(parameters, loss, losses, figures)

    def _step(self, parameters: list[torch.nn.Parameter], loss: torch.Tensor, losses: Any,
              figures: dict[str, torch.Tensor]) -> tuple[dict[str, float], float]:
        """The optimizer step once the gradients are in: unscaled, clipped, checked; the
        minibatch's figures (``figures`` beside the PPO losses) and gradient norm."""
        max_norm = self.config.train.max_grad_norm
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
            if not torch.isfinite(grad_norm):
                raise NonFiniteUpdate(f"gradient norm is {float(grad_norm)}")
            self.optimizer.step()
        values = {"loss": loss, "policy_loss": losses.policy_loss,
                  "value_loss": losses.value_loss, "entropy": losses.entropy,
                  "approx_kl": losses.approx_kl, "clipfrac": losses.clipfrac, **figures}
        return {key: float(value.detach()) for key, value in values.items()}, float(grad_norm)

    def _normalise(self, advantages: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(a - mean) / (std + 1e-8) with the mean and unbiased std of every member's
        ``rows`` (bool: those that enter the policy-gradient term)."""
        values = advantages[rows].astype(np.float64)
        total, squares, count = self.world.sum([float(values.sum()), float((values * values).sum()),
                                                float(len(values))])
        if count <= 1:
            return advantages
        mean = total / count
        std = math.sqrt(max(squares - count * mean * mean, 0.0) / (count - 1))
        return ((advantages - mean) / (std + 1e-8)).astype(np.float32)

    # --- state --------------------------------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.model.load_state_dict(snapshot["model"])
        self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.scaler.load_state_dict(snapshot["scaler"])

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue this run exactly where it stands."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {"step": self.step, "epoch": self.epoch,
                         "policy_version": self.policy_version,
                         "train_seconds": self.train_seconds,
                         "games": self.admission.games_total(),  # every game admitted
                         "steps_dropped_non_finite": self.steps_dropped_non_finite,
                         **self.buffer.counters()},
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "collector": self.collector.generator.get_state(),
                    "shuffle": self.shuffle_rng.bit_generator.state,
                    "records": self.records_rng.bit_generator.state},
            "buffer": self.buffer.state_dict(),
            "config": self.config.to_dict(),
            **({"reference_model": self.reference.state_dict(),
                "anchor_version": self.anchor_version} if self.reference is not None else {}),
            **({"pool": self.pool.state_dict()} if self.pool is not None else {}),
            # where the stream of train.supervised_data's positions stands
            **({"supervised": self.supervised.state_dict()}
               if isinstance(self.supervised, EndlessBatches) else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "reference_model" in state:
            self.set_reference(state["reference_model"])
            self.anchor_version = int(state.get("anchor_version", 0))
        if self.pool is not None and "pool" in state:
            self.pool.load_state_dict(state["pool"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        counters = state["counters"]
        self.step, self.epoch = int(counters["step"]), int(counters["epoch"])
        self.policy_version = int(counters["policy_version"])
        self.train_seconds = float(counters.get("train_seconds", 0.0))
        self.admission.games_carried = int(counters["games"])
        self.buffer.load_counters(counters)
        self.steps_dropped_non_finite = int(counters.get("steps_dropped_non_finite", 0))
        self.buffer.load_state_dict(state["buffer"], grow=True)
        rng = state["rng"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        self.collector.generator.set_state(rng["collector"])
        self.shuffle_rng.bit_generator.state = rng["shuffle"]
        if "records" in rng:  # train.supervised_records' draws (its folder is read anew)
            self.records_rng.bit_generator.state = rng["records"]
        if isinstance(self.supervised, EndlessBatches) and "supervised" in state:
            self.supervised.load_state_dict(state["supervised"])


async def call_callback(callback: Callback, report: EpochReport) -> None:
    """Call ``callback``; await the result only if it is awaitable."""
    result = callback(report)
    if inspect.isawaitable(result):
        await result


async def train(trainer: Trainer, callbacks: Sequence[Callback], until_step: int | None = None) -> None:
    """The one training loop: run epochs until ``until_step`` (default ``train.total_steps``)."""
    total = trainer.config.train.total_steps if until_step is None else until_step
    last_time, last_step = time.perf_counter(), trainer.step
    timed = bool(trainer.config.train.minutes)  # the same on every member: no collective without it
    while trainer.step < total and not (timed and trainer.world.any(trainer.time_up())):
        collected = trainer.collect()
        if trainer.world.any(trainer.stop.is_set()):
            raise TrainingInterrupted(f"stop requested at step {trainer.step}")
        try:
            updated = trainer.update()
        except EpochDropped:
            continue  # nothing trained: no new policy, no report
        trainer.publish()
        games = games_report(trainer.buffer, trainer.world)
        stale = round(trainer.world.sum([trainer.buffer.steps_dropped_stale])[0])
        now = time.perf_counter()
        trainer.train_seconds += now - last_time
        report = EpochReport(
            step=trainer.step, epoch=trainer.epoch, policy_version=trainer.policy_version,
            mode=trainer.mode(), steps_per_second=(trainer.step - last_step) / (now - last_time),
            steps_dropped_stale=stale, time=time.time(),
            collect=collected, update=updated, games=games, pool=trainer.pool_report(),
            anchor=trainer.gate_anchor(), train_seconds=round(trainer.train_seconds, 3))
        last_time, last_step = now, trainer.step
        for callback in callbacks:
            await call_callback(callback, report)


def games_report(buffer: ExperienceBuffer, world: World | None = None) -> GamesReport:
    """The games every member's buffer took in since it was last asked."""
    tally = merge_tallies((world if world is not None else Alone()).all_gather(buffer.drain_tally()))
    finished = tally.games or math.nan  # no game finished this epoch: rates are unknown
    return GamesReport(tally.games, tally.plies / finished, tally.black / finished,
                       tally.white / finished, tally.draws / finished, tally.reasons)


def merge_tallies(tallies: Sequence[GameTally]) -> GameTally:
    total = GameTally()
    for tally in tallies:
        total.games += tally.games
        total.plies += tally.plies
        total.black += tally.black
        total.white += tally.white
        total.draws += tally.draws
        for reason, count in tally.reasons.items():
            total.reasons[reason] = total.reasons.get(reason, 0) + count
    return total
