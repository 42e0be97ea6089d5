"""The one loop: phases, callbacks of both kinds, failure handling, reproducibility.

Tests that take ``world`` run in a world of one and on two gloo ranks (``conftest``)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EPOCH_FIELDS, greedy_games

from keisei.config import Config, ConfigError, load_config
from keisei.dataset import (
    DecodedBatch,
    EndlessBatches,
    ShardSet,
    decode_samples,
    endless_batches,
    prepare_dataset,
)
from keisei.evaluation import MatchResult
from keisei.model import Heads, masked_logits
from keisei.ppo import search_cross_entropy
from keisei.records import unpack_masks, unpack_observations
from learner.app import follow_actors
from learner.buffer import EpochBatch
from learner.ranks import World
from learner.reports import EpochReport, Mode
from learner.trainer import EpochDropped, Trainer, TrainingInterrupted, train

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=48", "train.steps_per_epoch=128", "train.minibatch_size=32",
        "train.ppo_passes=2", "run.threads=1",
        # float32: these tests compare arithmetic exactly, which bfloat16 autocast (auto on
        # CPUs with native bf16) would round
        "run.precision=float32"]


def tiny_config(*extra: str) -> Config:
    return load_config(None, [*TINY, *extra])


def test_loop_runs_epochs_and_calls_sync_and_async_callbacks(world: World) -> None:
    trainer = Trainer.build(tiny_config("train.total_steps=256"), threading.Event(), world=world)
    seen_sync, seen_async = [], []

    async def async_callback(report: EpochReport) -> None:
        await asyncio.sleep(0)
        seen_async.append(report.epoch)

    asyncio.run(train(trainer, [lambda report: seen_sync.append(report), async_callback]))
    assert [report.epoch for report in seen_sync] == [1, 2] and seen_async == [1, 2]
    last = seen_sync[-1]
    assert (last.step, last.policy_version, last.mode) == (256, 2, Mode.SEQUENTIAL)
    assert trainer.buffer.policy_version() == 2  # read from the trainer, never copied
    assert last.update.ppo_passes == 2 and seen_sync[0].collect.collected_steps >= 128 // world.size
    assert 0 <= last.update.clipfrac <= 1 and last.update.policy_lag_max >= 0
    assert set(last.to_json()) == EPOCH_FIELDS  # no actors, no ratings: the sequential fields


def test_failed_update_restores_state_and_propagates(caplog: pytest.LogCaptureFixture,
                                                     world: World) -> None:
    trainer = Trainer.build(tiny_config(), threading.Event(), world=world)
    trainer.collect()
    held = trainer.buffer.size
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    original = trainer._minibatch_step
    calls = []

    def failing(*args, **options):  # one real optimizer step, then a failure
        calls.append(1)
        if len(calls) > 1:
            raise FloatingPointError("injected failure")
        return original(*args, **options)

    trainer._minibatch_step = failing  # type: ignore[method-assign]
    with pytest.raises(FloatingPointError, match="injected"):
        trainer.update()
    assert trainer.processing is False
    assert trainer.buffer.size == held and (trainer.step, trainer.epoch) == (0, 0)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert "PPO update failed at epoch 1" in caplog.text
    trainer._minibatch_step = original  # type: ignore[method-assign]
    trainer.update()  # and it can carry on
    assert trainer.epoch == 1


def test_stop_request_interrupts_at_a_safe_point(world: World) -> None:
    stop = threading.Event()
    trainer = Trainer.build(tiny_config(), stop, world=world)
    trainer.collect()
    stop.set()
    with pytest.raises(TrainingInterrupted):
        trainer.update()
    assert trainer.processing is False and trainer.buffer.ready() and trainer.epoch == 0


def run_epochs(epochs: int, world: World) -> tuple[Trainer, list[dict]]:
    """The epochs' metrics records, as metrics.jsonl gets them."""
    trainer = Trainer.build(tiny_config(f"train.total_steps={128 * epochs}", "run.seed=11"),
                            threading.Event(), world=world)
    metrics: list[dict] = []
    asyncio.run(train(trainer, [lambda report: metrics.append(report.to_json())]))
    return trainer, metrics


def test_a_seeded_sequential_run_is_reproducible(world: World) -> None:
    first, first_metrics = run_epochs(2, world)
    second, second_metrics = run_epochs(2, world)
    for key in ("policy_loss", "value_loss", "entropy", "games", "mean_game_length"):
        # repr: an epoch in which no game finished reports NaN, and NaN != NaN
        assert [repr(m[key]) for m in first_metrics] == [repr(m[key]) for m in second_metrics], key
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key])


def test_state_dict_round_trip_continues_counters(world: World) -> None:
    trainer, _ = run_epochs(1, world)
    state = trainer.state_dict()
    fresh = Trainer.build(tiny_config("train.total_steps=128", "run.seed=11"), threading.Event(),
                          world=world)
    fresh.load_state_dict(state)
    assert (fresh.step, fresh.epoch, fresh.policy_version) == (128, 1, 1)
    assert fresh.buffer.size == trainer.buffer.size and fresh.buffer.policy_version() == 1


def test_hostile_behaviour_log_probs_leave_the_update_finite(world: World) -> None:
    """Legal games whose log-probs claim -100 (valid on the wire) used to overflow the
    ratio to inf, fail the update and put the epoch back: a crash loop."""
    trainer = Trainer.build(tiny_config(), threading.Event(), world=world)
    trainer.collect()
    trainer.buffer._arrays["log_probs"][:trainer.buffer.size] = -100.0
    report = trainer.update()
    assert math.isfinite(report.loss) and math.isfinite(report.approx_kl)
    assert all(bool(torch.isfinite(value).all()) for value in trainer.model.state_dict().values())
    assert trainer.epoch == 1 and trainer.steps_dropped_non_finite == 0


def test_an_epoch_that_goes_non_finite_is_dropped_counted_and_training_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, world: World) -> None:
    import learner.trainer as module

    trainer = Trainer.build(tiny_config("train.total_steps=256"), threading.Event(), world=world)
    shard = 128 // world.size
    before = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    real_losses, calls = module.ppo_losses, []

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        losses = real_losses(*args, **kwargs)
        calls.append(1)
        return dataclasses.replace(losses, loss=losses.loss * math.nan) if len(calls) == 1 else losses

    monkeypatch.setattr(module, "ppo_losses", poisoned)
    trainer.collect()
    with pytest.raises(EpochDropped):
        trainer.update()
    assert trainer.steps_dropped_non_finite == shard and (trainer.step, trainer.epoch) == (0, 0)
    assert f"epoch 1 dropped untrained ({shard} steps; from in-process {shard})" in caplog.text
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    reports: list[EpochReport] = []
    asyncio.run(train(trainer, [reports.append]))  # the loop carries on past it
    assert trainer.step == 256 and [report.epoch for report in reports] == [1, 2]


def test_searched_plays_reach_the_buffer_as_forced_plies_with_targets() -> None:
    """In-process, selfplay.search_plays marks every searched ply forced (out of the
    policy-gradient term), and each keeps its search target to learn from."""
    config = tiny_config("selfplay.search_share=0.5", "selfplay.search_visits=4",
                         "selfplay.search_plays=true", "selfplay.mate_search=0")
    trainer = Trainer.build(config, threading.Event())
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    has_target = batch.search_probs.sum(axis=1) > 0
    assert 0.3 < has_target.mean() < 0.7
    assert batch.forced[has_target].all()
    single = unpack_masks(batch.legal_masks).sum(axis=1) == 1
    assert np.array_equal(batch.forced, has_target | single)


def _trained_toward_sure_targets(search_coef: float, world: World) -> tuple[float, float, int, float]:
    """Collect an epoch with search targets on about half the plies, make each target sure
    of one legal move (a random network's search barely differs from its policy, so
    this makes the pull visible), update once; return the cross-entropy toward those
    targets before and after, and the update's search_targets and search_loss."""
    config = tiny_config("selfplay.search_share=0.5", "selfplay.search_visits=4",
                         f"train.search_coef={search_coef}", "train.learning_rate=0.003",
                         "train.ent_coef=0")
    trainer = Trainer.build(config, threading.Event(), world=world)
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    has_target = batch.search_probs.sum(axis=1) > 0
    assert 0.3 < has_target.mean() < 0.7  # about search_share of the plies
    assert np.allclose(batch.search_probs[has_target].sum(axis=1), 1.0, atol=1e-3)
    order = np.argsort(-batch.search_probs, axis=1)
    chosen = np.take_along_axis(batch.search_actions, order[:, 1:2], axis=1)[:, 0]
    batch.search_actions[:] = -1
    batch.search_probs[:] = 0
    batch.search_actions[has_target, 0] = chosen[has_target]
    batch.search_probs[has_target, 0] = 1.0
    trainer.buffer.restore_epoch(batch)
    rows = np.flatnonzero(has_target)
    observations = torch.from_numpy(unpack_observations(batch.observations[rows])).float()
    legal = torch.from_numpy(unpack_masks(batch.legal_masks[rows]))

    def cross_entropy() -> float:
        trainer.model.eval()
        with torch.no_grad():
            logits, _ = trainer.model(observations)
            log_probs = torch.log_softmax(masked_logits(logits, legal), dim=-1)
            return float(search_cross_entropy(log_probs, torch.from_numpy(batch.search_actions[rows]),
                                              torch.from_numpy(batch.search_probs[rows])).mean())

    before = cross_entropy()
    report = trainer.update()
    return before, cross_entropy(), report.search_targets, report.search_loss


def test_search_targets_reach_the_buffer_and_the_update_pulls_the_policy_toward_them(
        world: World) -> None:
    before, after, targets, search_loss = _trained_toward_sure_targets(20.0, world)
    assert targets > 0 and math.isfinite(search_loss) and search_loss < before
    before_off, after_off, targets_off, _ = _trained_toward_sure_targets(0.0, world)
    assert before_off == pytest.approx(before) and targets_off == targets  # same data
    assert after < before - 0.2 and after < after_off - 0.2  # the term, not PPO, pulled it


def test_the_exact_kl_is_the_kl_from_the_pre_update_policy_over_legal_moves(world: World) -> None:
    """One pass of one minibatch: the update's exact KL is KL(pre-update || policy) of the
    minibatch's training forward, before its step, summed by hand over each position's
    legal moves; the pre-update policy is the one that acts (evaluation mode)."""
    trainer = Trainer.build(tiny_config("train.ppo_passes=1", "train.minibatch_size=128"),
                            threading.Event(), world=world)
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    model = copy.deepcopy(trainer.model)
    observations = torch.from_numpy(unpack_observations(batch.observations)).float()
    legal = unpack_masks(batch.legal_masks)
    with torch.no_grad():
        model.eval()
        before = torch.log_softmax(model(observations).logits.double(), dim=-1).numpy()
        model.train()
        during = torch.log_softmax(model(observations).logits.double(), dim=-1).numpy()
    by_hand = []
    for row in range(batch.size):
        moves = np.flatnonzero(legal[row])
        old = before[row, moves] - np.log(np.exp(before[row, moves]).sum())  # over legal moves
        new = during[row, moves] - np.log(np.exp(during[row, moves]).sum())
        by_hand.append(float((np.exp(old) * (old - new)).sum()))
    trainer.buffer.restore_epoch(batch)
    report = trainer.update()
    expected = world.mean([float(np.mean(by_hand))])[0]
    assert report.exact_kl == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert report.exact_kl > 0 and math.isfinite(report.approx_kl)


def test_a_forced_ply_does_not_move_the_policy_gradient_loss(world: World) -> None:
    """Two identical seeded trainers and epochs, every third ply marked forced; in one the
    forced plies' behaviour log-probabilities are wrecked. The update's policy loss, its
    ratio statistics and the trained weights do not change: a forced ply is out of the
    policy-gradient term."""
    reports, weights = [], []
    for wrecked in (False, True):
        trainer = Trainer.build(tiny_config("train.ppo_passes=1"), threading.Event(), world=world)
        trainer.collect()
        size = trainer.buffer.size
        forced = np.arange(size) % 3 == 0
        trainer.buffer._arrays["forced"][:size] = forced
        if wrecked:
            trainer.buffer._arrays["log_probs"][:size][forced] = -15.0
        reports.append(trainer.update())
        weights.append(trainer.model.state_dict())
    plain, broken = reports
    assert broken.policy_loss == pytest.approx(plain.policy_loss, rel=1e-6, abs=1e-7)
    assert broken.clipfrac == pytest.approx(plain.clipfrac, abs=1e-7)
    assert broken.approx_kl == pytest.approx(plain.approx_kl, rel=1e-6, abs=1e-7)
    for key, value in weights[0].items():
        assert torch.allclose(value, weights[1][key], rtol=1e-6, atol=1e-7), key


def test_value_passes_leave_the_value_head_out_of_the_later_passes(world: World) -> None:
    """Two passes with train.value_passes=1 move the value head exactly as one pass does
    (same seed, same epoch), while the policy goes on learning in the second pass."""
    models = {}
    for setting in ("train.ppo_passes=1", "train.value_passes=1"):
        trainer = Trainer.build(tiny_config(setting), threading.Event(), world=world)
        trainer.collect()
        trainer.update()
        models[setting] = trainer.model
    one, two = models["train.ppo_passes=1"], models["train.value_passes=1"]
    for (name, first), second in zip(one.value_head.named_parameters(),
                                     two.value_head.parameters(), strict=True):
        assert torch.equal(first, second), name
    assert not torch.equal(one.policy_head.weight, two.policy_head.weight)
    assert not torch.equal(one.stem[0].weight, two.stem[0].weight)


def test_epoch_statistics_train_the_policy_that_acts(world: World) -> None:
    """With the learning rate at 0 nothing should move. Under minibatch statistics the
    policy trained still differs from the acting one (batch norm in training mode); under
    epoch statistics it is the same policy, and every batch norm's running mean is the
    epoch's (every member's) mean, measured at the stem's normalisation."""
    figures = {}
    for mode in ("minibatch", "epoch"):
        trainer = Trainer.build(tiny_config("train.learning_rate=0", "train.ppo_passes=1",
                                            f"train.norm_statistics={mode}"),
                                threading.Event(), world=world)
        trainer.collect()
        batch = trainer.buffer.take_epoch()
        trainer.buffer.restore_epoch(batch)
        report = trainer.update()
        figures[mode] = report.exact_kl
        if mode == "epoch":
            stem = trainer.model.stem
            with torch.no_grad():
                outputs = stem[0](torch.from_numpy(unpack_observations(batch.observations)).float())
            means = world.mean(outputs.mean(dim=(0, 2, 3)).tolist())
            assert torch.allclose(stem[1].running_mean, torch.tensor(means), rtol=1e-4, atol=1e-5)
    assert figures["minibatch"] > 1e-3
    assert figures["epoch"] == pytest.approx(0.0, abs=1e-6)


def test_a_network_without_batch_norm_trains_the_policy_that_acts(world: World) -> None:
    """With model.norm=none and the learning rate at 0, the update's policy is the one that
    played the epoch (in-process, version 0 throughout): no KL from the policy before the
    update, and no ply outside the clip range; with batch norm the same update has both."""
    figures = {}
    for norm in ("batch", "none"):
        trainer = Trainer.build(tiny_config("train.learning_rate=0", "train.ppo_passes=2",
                                            f"model.norm={norm}"), threading.Event(), world=world)
        trainer.collect()
        report = trainer.update()
        figures[norm] = (report.exact_kl, report.clipfrac)
    assert figures["batch"][0] > 1e-3 and figures["batch"][1] > 0
    assert figures["none"][0] == pytest.approx(0.0, abs=1e-6) and figures["none"][1] == 0.0


def test_refreshed_statistics_are_those_of_the_weights_that_will_act(world: World) -> None:
    """Under norm_statistics=refresh the update trains with minibatch statistics, then sets
    the running statistics from the epoch's positions with the updated weights: the
    stem's running mean is the mean of its convolution's output over every member's
    epoch, computed with the weights after the update."""
    trainer = Trainer.build(tiny_config("train.norm_statistics=refresh"), threading.Event(),
                            world=world)
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    trainer.buffer.restore_epoch(batch)
    before = trainer.model.stem[0].weight.detach().clone()
    trainer.update()
    stem = trainer.model.stem
    assert not torch.equal(stem[0].weight, before)  # the update moved the weights
    with torch.no_grad():
        outputs = stem[0](torch.from_numpy(unpack_observations(batch.observations)).float())
    means = world.mean(outputs.mean(dim=(0, 2, 3)).tolist())
    assert torch.allclose(stem[1].running_mean, torch.tensor(means), rtol=1e-4, atol=1e-5)


def test_the_pool_fills_plays_reports_and_survives_a_checkpoint(world: World) -> None:
    config = tiny_config("pool.share=0.5", "pool.every_epochs=2", "pool.size=3",
                         "train.total_steps=1280", "selfplay.max_plies=16")
    trainer = Trainer.build(config, threading.Event(), world=world)
    reports: list[EpochReport] = []
    asyncio.run(train(trainer, [reports.append]))
    # every second policy joins; the oldest leave beyond three
    assert trainer.pool is not None and trainer.pool.names() == ["v6", "v8", "v10"]
    records = [report.to_json() for report in reports]
    assert [record["pool_size"] for record in records] == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3]
    played = sum(record["pool_games"] for record in records)
    assert played > 0 and sum(row["games"] for row in records[-1]["pool"]) <= played
    assert all(0.0 <= record["pool_score"] <= 1.0 for record in records if record["pool_games"])
    fresh = Trainer.build(config, threading.Event(), world=world)
    fresh.load_state_dict(trainer.state_dict())
    assert fresh.pool is not None and fresh.pool.names() == trainer.pool.names()
    assert [opponent.games for opponent in fresh.pool.opponents] == \
        [opponent.games for opponent in trainer.pool.opponents]


def test_an_init_from_runs_start_network_is_pinned_in_the_pool() -> None:
    trainer = Trainer.build(tiny_config("pool.share=0.2", "pool.size=1"), threading.Event())
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.set_reference(start)
    assert trainer.pool is not None
    trainer.pool.add("v1", trainer.model.state_dict())
    trainer.pool.add("v2", trainer.model.state_dict())
    assert trainer.pool.names() == ["start", "v2"] and trainer.pool.opponents[0].pinned


GATED = ["train.init_kl_coef=0.5", "train.kl_anchor=gated", "train.anchor_every_epochs=2",
         "train.anchor_gate_games=4", "train.total_steps=512"]


@pytest.mark.parametrize(("wins", "moves"), [(3, True), (2, False)])
def test_the_gated_anchor_becomes_the_policy_only_when_it_passes_its_gate(
        monkeypatch: pytest.MonkeyPatch, wins: int, moves: bool) -> None:
    trainer = Trainer.build(tiny_config(*GATED, "train.anchor_gate_score=0.6"), threading.Event())
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.set_reference(start)
    gates: list[int] = []

    def scored(games: list[object]) -> MatchResult:  # the gate's games, scored as told
        gates.append(len(games))
        return MatchResult(wins, 0, 4 - wins)

    monkeypatch.setattr("learner.trainer.match_tally", scored)
    reports: list[EpochReport] = []
    asyncio.run(train(trainer, [reports.append]))
    records = [report.to_json() for report in reports]
    assert gates == [4, 4]  # after epochs 2 and 4, four games each
    assert [record["anchor_gate_games"] for record in records] == [0, 4, 0, 4]
    assert [record["anchor_gate_score"] for record in records] == [None, wins / 4, None, wins / 4]
    assert [record["anchor_moved"] for record in records] == [False, moves, False, moves]
    assert [record["anchor_version"] for record in records] == ([0, 2, 2, 4] if moves else [0] * 4)
    assert trainer.reference is not None
    anchor, policy = trainer.reference.state_dict(), trainer.model.state_dict()
    for name, weights in anchor.items():  # 0.75 passes the 0.6 gate, 0.5 does not
        assert torch.equal(weights, policy[name] if moves else start[name]), name
    assert records[-1]["init_kl"] is not None and records[-1]["init_kl_coef"] == 0.5


def test_the_gate_plays_real_games_and_its_anchor_survives_a_checkpoint(world: World) -> None:
    config = tiny_config(*GATED, "train.anchor_gate_score=0", "selfplay.max_plies=16")
    trainer = Trainer.build(config, threading.Event(), world=world)
    trainer.hold_anchor(trainer.model.state_dict())
    reports: list[EpochReport] = []
    asyncio.run(train(trainer, [reports.append]))
    gated = [report.anchor for report in reports if report.anchor and report.anchor.anchor_gate_games]
    assert [(item.anchor_gate_games, item.anchor_moved) for item in gated] == [(4, True)] * 2
    assert all(0.0 <= item.anchor_gate_score <= 1.0 for item in gated)
    assert trainer.anchor_version == trainer.policy_version == 4
    fresh = Trainer.build(config, threading.Event(), world=world)
    fresh.load_state_dict(trainer.state_dict())
    assert fresh.anchor_version == 4 and fresh.reference is not None
    assert trainer.reference is not None
    for name, weights in trainer.reference.state_dict().items():
        assert torch.equal(fresh.reference.state_dict()[name], weights), name


def test_the_update_sets_the_threads_that_threads_says_before_each_minibatch() -> None:
    trainer = Trainer.build(tiny_config(), threading.Event())
    trainer.collect()
    seen: list[int] = []  # torch's thread count when asked: the previous answer, applied

    def threads() -> int:
        seen.append(torch.get_num_threads())
        return 2 if len(seen) % 2 else 1

    trainer.threads = threads
    try:
        trainer.update()
    finally:
        torch.set_num_threads(1)
    # asked before each of the pre-update pass's 4 chunks and the 2 passes' 4 minibatches
    assert seen == [1] + [2 if call % 2 else 1 for call in range(1, 12)]


def test_the_learners_threads_leave_a_core_to_each_playing_local_actor() -> None:
    playing = [True]
    threads = follow_actors(2, 2, lambda: playing[0])
    assert threads() == 1  # never fewer than one
    playing[0] = False  # paused on back-pressure: every core is the update's
    assert threads() == 2
    assert follow_actors(16, 2, lambda: True)() == 14


def _anchored_trainer(world: World, *extra: str) -> Trainer:
    """A tiny trainer whose anchor is its own network with every weight moved a little."""
    trainer = Trainer.build(tiny_config(*extra), threading.Event(), world=world)
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.set_reference(start)
    generator = torch.Generator().manual_seed(7)
    assert trainer.reference is not None
    with torch.no_grad():
        for parameter in trainer.reference.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return trainer


def test_the_value_anchor_is_the_mean_squared_gap_to_the_anchors_value(world: World) -> None:
    """One pass of one minibatch: the reported value anchor is the mean of
    (value - anchor's value)² over the minibatch, by hand, the value from the training
    forward before the step and the anchor's in evaluation mode."""
    trainer = _anchored_trainer(world, "train.value_anchor_coef=2.0", "train.ppo_passes=1",
                                "train.minibatch_size=128")
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    model, reference = copy.deepcopy(trainer.model), trainer.reference
    assert reference is not None
    observations = torch.from_numpy(unpack_observations(batch.observations)).float()
    with torch.no_grad():
        model.train()
        values = model(observations).value.double().numpy()
        anchored = reference(observations).value.double().numpy()
    by_hand = float(np.mean((values - anchored) ** 2))
    trainer.buffer.restore_epoch(batch)
    report = trainer.update()
    expected = world.mean([by_hand])[0]
    assert expected > 1e-4  # the anchor's values differ
    assert report.value_anchor == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert math.isnan(report.init_kl)  # the KL penalty is off; the anchor held all the same


def test_the_value_anchor_pulls_the_value_toward_the_anchors_and_is_null_when_off(world: World) -> None:
    gaps = []
    for coef in (0.0, 50.0):
        trainer = _anchored_trainer(world, f"train.value_anchor_coef={coef}", "train.ppo_passes=4",
                                    "train.minibatch_size=32", "train.learning_rate=0.003")
        trainer.collect()
        batch = trainer.buffer.take_epoch()
        trainer.buffer.restore_epoch(batch)
        report = trainer.update()
        assert math.isnan(report.value_anchor) == (coef == 0)
        observations = torch.from_numpy(unpack_observations(batch.observations)).float()
        assert trainer.reference is not None
        with torch.no_grad():
            trainer.model.eval()
            gap = torch.square(trainer.model(observations).value - trainer.reference(observations).value)
        gaps.append(float(gap.mean()))
    assert gaps[1] < 0.5 * gaps[0]


@pytest.fixture(scope="module")
def engine_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared data set of a few greedy games: recorded moves and results to learn."""
    folder = tmp_path_factory.mktemp("supervised")
    prepare_dataset([str(greedy_games(folder / "records", 6))], folder / "data",
                    val_fraction=0.0, max_duplicates=4, shard_size=256)
    return folder / "data"


def _engine_minibatch(world: World, engine_data: Path, *settings: str
                      ) -> tuple[Trainer, DecodedBatch, EpochBatch, Heads]:
    """A trainer whose one minibatch takes 24 engine positions beside an epoch of
    self-play, that epoch (taken; give it back with ``restore_epoch``), the positions, and
    every head's output on the engine positions in the training forward before the step
    (batch norm over both kinds of position together)."""
    trainer = Trainer.build(tiny_config(*settings, f"train.supervised_data={engine_data}",
                                        "train.supervised_batch=24", "train.ppo_passes=1",
                                        "train.minibatch_size=128", "run.precision=float32"),
                            threading.Event(), world=world)
    samples = next(ShardSet(engine_data, "train").batches(24, None))
    decoded = decode_samples(samples)
    trainer.supervised = itertools.repeat(samples)
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    model = copy.deepcopy(trainer.model)
    inputs = torch.cat([torch.from_numpy(unpack_observations(batch.observations)).float(),
                        torch.from_numpy(decoded.observations)])
    with torch.no_grad():
        model.train()
        logits, prior, values = model.heads(inputs)
    return trainer, decoded, batch, Heads(logits[batch.size:], None if prior is None
                                          else prior[batch.size:], values[batch.size:])


def _legal_log_probs(logits: torch.Tensor, decoded: DecodedBatch) -> np.ndarray:
    """Log-softmax over each position's legal moves, by hand in float64 (illegal: -inf)."""
    masked = logits.double().numpy()
    masked[~decoded.legal_masks] = -np.inf
    masked = masked - masked.max(axis=1, keepdims=True)
    return np.asarray(masked - np.log(np.exp(masked).sum(axis=1, keepdims=True)))


def test_the_supervised_figures_are_the_recorded_moves_and_results_losses(
        world: World, engine_data: Path) -> None:
    """One pass of one minibatch: the reported cross-entropy on the recorded moves, value
    loss 0.5 (value - result)² and top-1 accuracy are, by hand, those of the supervised
    positions in the training forward before the step."""
    trainer, decoded, batch, heads = _engine_minibatch(world, engine_data)
    assert 0 < decoded.result_known.sum()
    log_probs = _legal_log_probs(heads.logits, decoded)
    values = heads.value.double().numpy()
    cross_entropy = float(-log_probs[np.arange(len(decoded.actions)), decoded.actions].mean())
    known = decoded.result_known
    value_loss = float(np.mean(0.5 * (values[known] - decoded.results[known]) ** 2))
    accuracy = float(np.mean(log_probs.argmax(axis=1) == decoded.actions))
    trainer.buffer.restore_epoch(batch)
    report = trainer.update()
    expected = world.mean([cross_entropy, value_loss, accuracy])
    assert report.supervised_loss == pytest.approx(expected[0], rel=1e-3)
    assert report.supervised_value_loss == pytest.approx(expected[1], rel=1e-3, abs=1e-6)
    assert report.supervised_accuracy == pytest.approx(expected[2])


def test_the_supervised_loss_teaches_the_recorded_moves_and_is_null_when_off(
        world: World, engine_data: Path) -> None:
    samples = next(ShardSet(engine_data, "train").batches(32, None))
    decoded = decode_samples(samples)
    observations = torch.from_numpy(decoded.observations)
    legal = torch.from_numpy(decoded.legal_masks)
    actions = torch.from_numpy(decoded.actions)
    learnt = []
    for coef in (0.0, 10.0):
        trainer = Trainer.build(tiny_config(
            f"train.supervised_data={engine_data}", f"train.supervised_coef={coef}",
            "train.supervised_batch=32", "train.ppo_passes=4", "train.minibatch_size=32",
            "train.learning_rate=0.003"), threading.Event(), world=world)
        trainer.supervised = itertools.repeat(samples)
        trainer.collect()
        report = trainer.update()
        assert math.isfinite(report.supervised_loss)  # measured whatever its weight
        with torch.no_grad():
            trainer.model.eval()
            log_probs = torch.log_softmax(masked_logits(trainer.model(observations).logits, legal), -1)
        learnt.append(float(-log_probs.gather(1, actions[:, None]).mean()))
    assert learnt[1] < learnt[0] - 0.5
    trainer = Trainer.build(tiny_config("train.ppo_passes=1"), threading.Event(), world=world)
    trainer.collect()
    report = trainer.update()
    assert math.isnan(report.supervised_loss) and math.isnan(report.supervised_accuracy)


def test_the_prior_head_learns_the_engine_moves_alone(world: World, engine_data: Path) -> None:
    """model.prior_head: its reported cross-entropy is, by hand, the prior head's on the
    engine positions in the training forward; without engine games it gets no gradient and
    stays as it started while the policy head learns self-play."""
    trainer, decoded, batch, heads = _engine_minibatch(world, engine_data, "model.prior_head=true")
    assert heads.prior is not None and trainer.model.prior_head is not None
    started = trainer.model.prior_head.weight.detach().clone()
    log_probs = _legal_log_probs(heads.prior, decoded)
    cross_entropy = float(-log_probs[np.arange(len(decoded.actions)), decoded.actions].mean())
    accuracy = float(np.mean(log_probs.argmax(axis=1) == decoded.actions))
    trainer.buffer.restore_epoch(batch)
    report = trainer.update()
    expected = world.mean([cross_entropy, accuracy])
    assert report.prior_loss == pytest.approx(expected[0], rel=1e-3)
    assert report.prior_accuracy == pytest.approx(expected[1])
    assert "prior " in " ".join(report.extra_terms())
    assert not torch.equal(trainer.model.prior_head.weight, started)

    alone = Trainer.build(tiny_config("model.prior_head=true", "train.ppo_passes=2"),
                          threading.Event(), world=world)
    start = copy.deepcopy(alone.model.state_dict())
    alone.collect()
    report = alone.update()
    assert math.isnan(report.prior_loss) and math.isnan(report.prior_accuracy)
    after = alone.model.state_dict()
    assert torch.equal(after["prior_head.weight"], start["prior_head.weight"])
    assert torch.equal(after["prior_bias"], start["prior_bias"])
    assert not torch.equal(after["policy_head.weight"], start["policy_head.weight"])


def test_a_supervised_data_folder_that_is_no_data_set_is_refused_by_name(tmp_path: Path,
                                                                         engine_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.supervised_data = .*not a prepared data set"):
        Trainer.build(tiny_config(f"train.supervised_data={tmp_path}"), threading.Event())
    with pytest.raises(ConfigError, match="fewer than a batch of 65536"):
        Trainer.build(tiny_config(f"train.supervised_data={engine_data}",
                                  "train.supervised_batch=65536"), threading.Event())


def test_engine_games_written_beside_the_learner_are_trained_once_every_member_has_some(
        world: World, tmp_path: Path) -> None:
    """train.supervised_records: the games a keisei-generate appends while the run trains
    join the engine positions before the next update, on every member together."""
    records = tmp_path / "records"
    records.mkdir()
    trainer = Trainer.build(tiny_config(f"train.supervised_records={records}",
                                        "train.supervised_batch=16", "train.ppo_passes=1",
                                        "pretrain.val_fraction=0"), threading.Event(), world=world)
    trainer.collect()
    report = trainer.update()
    assert math.isnan(report.supervised_loss) and report.supervised_positions == 0
    if world.is_main:  # with two members, the other has none yet: neither trains on them
        greedy_games(tmp_path / "first", 3).rename(records / "games-00.csa")
    trainer.collect()
    report = trainer.update()
    assert math.isnan(report.supervised_loss) == (world.size > 1)
    more = greedy_games(tmp_path / "second", 3, seed=1).read_text()
    with open(records / "games-00.csa", "a", encoding="utf-8") as handle:
        handle.write(("/\n" if world.is_main else "") + more)
    trainer.collect()
    report = trainer.update()
    assert trainer.supervised_records is not None
    assert trainer.supervised_records.games == (6 if world.is_main else 3)
    assert math.isfinite(report.supervised_loss) and math.isfinite(report.supervised_accuracy)
    assert report.supervised_positions == len(trainer.supervised_records) > 0
    assert f"of {report.supervised_positions}" in " ".join(report.extra_terms())


def test_engine_positions_are_drawn_from_the_data_set_and_the_records_by_size(
        engine_data: Path, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    greedy_games(tmp_path / "made", 12, seed=3).rename(records / "games-00.csa")
    trainer = Trainer.build(tiny_config(f"train.supervised_data={engine_data}",
                                        f"train.supervised_records={records}",
                                        "train.supervised_batch=32", "pretrain.val_fraction=0"),
                            threading.Event())
    trainer._read_records()
    assert trainer.supervised_records is not None
    grown = set(map(bytes, trainer.supervised_records.samples))
    prepared = list(map(bytes, np.concatenate(list(ShardSet(engine_data, "train").batches(64, None)))))
    assert trainer.supervised_positions() == len(trainer.supervised_records) + len(prepared)
    share = len(trainer.supervised_records) / trainer.supervised_positions()
    also_grown = sum(row in grown for row in prepared) / len(prepared)  # shared openings
    drawn = [trainer._supervised_samples() for _ in range(300)]
    assert all(batch is not None and len(batch) == 32 for batch in drawn)
    seen = sum(bytes(row) in grown for batch in drawn if batch is not None for row in batch)
    assert seen / (300 * 32) == pytest.approx(share + (1 - share) * also_grown, abs=0.03)


def test_a_supervised_records_folder_that_does_not_exist_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.supervised_records = .*missing.*no such folder"):
        Trainer.build(tiny_config(f"train.supervised_records={tmp_path / 'missing'}"),
                      threading.Event())


def test_the_supervised_batches_go_on_past_the_end_of_the_data(engine_data: Path) -> None:
    size = len(ShardSet(engine_data, "train"))
    stream = endless_batches(engine_data, 50, np.random.default_rng(0))
    batches = [next(stream) for _ in range(3 * size // 50)]
    assert all(len(samples) == 50 for samples in batches)
    seen = {bytes(row) for samples in batches for row in samples["hcp"]}
    assert len(seen) > 0.5 * len({bytes(row) for row in next(ShardSet(engine_data, "train")
                                                             .batches(size, None))["hcp"]})


def test_the_supervised_stream_resumes_where_it_stood(engine_data: Path) -> None:
    """Past a pass's end and mid-pass, a stream loaded from a state goes on with the batches
    the original would have given; a checkpoint carries the state, so a resumed run does not
    take the same engine positions again from the start."""
    size = len(ShardSet(engine_data, "train"))
    for taken in (3, size // 40 + 2):  # mid-pass; into the second pass
        stream = endless_batches(engine_data, 40, np.random.default_rng(5))
        for _ in range(taken):
            next(stream)
        state = stream.state_dict()
        expected = [next(stream)["hcp"].tobytes() for _ in range(size // 40 + 1)]
        again = endless_batches(engine_data, 40, np.random.default_rng(99))
        again.load_state_dict(state)
        assert [next(again)["hcp"].tobytes() for _ in range(size // 40 + 1)] == expected
    other = endless_batches(engine_data, 30, np.random.default_rng(99))
    other.load_state_dict(state)  # another batch size: a fresh pass, of full batches
    assert len(next(other)) == 30

    config = tiny_config(f"train.supervised_data={engine_data}", "train.supervised_batch=16")
    trainer = Trainer.build(config, threading.Event())
    for _ in range(5):
        assert trainer.supervised is not None and len(next(trainer.supervised)) == 16
    state = trainer.state_dict()
    following = next(trainer.supervised)["hcp"].tobytes()
    resumed = Trainer.build(config, threading.Event())
    resumed.load_state_dict(state)
    assert resumed.supervised is not None and next(resumed.supervised)["hcp"].tobytes() == following
    # another rank's stream after loading rank 0's state: a pass in its own order
    assert isinstance(resumed.supervised, EndlessBatches)
    resumed.supervised.reseed(np.random.default_rng(7))
    fresh = endless_batches(engine_data, 16, np.random.default_rng(7))
    assert next(resumed.supervised)["hcp"].tobytes() == next(fresh)["hcp"].tobytes()
