"""Several learner ranks: the pieces alone, and one update of 2 ranks against 1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from rank_update import updates

from keisei.config import ConfigError, load_config
from learner.buffer import EpochBatch
from learner.launch import (
    BLAME_WAIT_SECONDS,
    EXIT_RANK_LOST,
    RankInfo,
    _first_failure,
    check_divisible,
    describe_exit,
    free_port,
    rank_bind,
)
from learner.main import without_ranks
from learner.ranks import merge_shards, split_buffer, synchronise_batch_norm, weights_checksum
from learner.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=48", "train.steps_per_epoch=128", "train.minibatch_size=128",
        "train.ppo_passes=3", "run.threads=1", "train.target_kl=0.5",
        # float32: these tests compare arithmetic exactly, which bfloat16 autocast (auto on
        # CPUs with native bf16) would round
        "run.precision=float32"]


def test_rank_info_from_the_environment() -> None:
    assert RankInfo.from_env({}) is None
    assert RankInfo.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    info = RankInfo.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert info == RankInfo(1, 2, 1)
    with pytest.raises(ConfigError, match="RANK='x'"):
        RankInfo.from_env({"WORLD_SIZE": "2", "RANK": "x"})
    with pytest.raises(ConfigError, match="expected 0 <= RANK < WORLD_SIZE"):
        RankInfo.from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        RankInfo.from_env({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"})


def test_sizes_must_split_over_the_ranks() -> None:
    check_divisible(1024, 256, 4)
    with pytest.raises(ConfigError) as caught:
        check_divisible(1000, 250, 3)
    assert "train.steps_per_epoch = 1000" in str(caught.value)
    assert "train.minibatch_size = 250" in str(caught.value)


def test_rank_ports_and_arguments() -> None:
    assert rank_bind("tcp://127.0.0.1:5555", 0) == "tcp://127.0.0.1:5555"
    assert rank_bind("tcp://0.0.0.0:5555", 3) == "tcp://0.0.0.0:5561"
    assert without_ranks(["--ranks", "2", "--set", "a.b=1", "--ranks=3", "--resume"]) == [
        "--set", "a.b=1", "--resume"]
    assert describe_exit(-9) == "was killed by SIGKILL" and describe_exit(4) == "exited with code 4"
    assert describe_exit(EXIT_RANK_LOST) == "exited with code 3 (another rank left)"
    assert 0 < free_port() < 65536


class _Ended:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def test_the_launcher_blames_the_rank_that_left_not_those_that_saw_it_go() -> None:
    def first(codes: list[int | None], since: float | None = None) -> tuple[object, float | None]:
        return _first_failure([_Ended(code) for code in codes], since)  # type: ignore[list-item]

    assert first([None, None]) == (None, None)
    assert first([0, None]) == (None, None)
    # rank 0 saw rank 1 go before rank 1's end was seen: wait for the cause ...
    blamed, since = first([EXIT_RANK_LOST, None])
    assert blamed is None and since is not None
    # ... which is rank 1, killed
    assert first([EXIT_RANK_LOST, -9], since)[0] == (1, -9)
    assert first([1, EXIT_RANK_LOST])[0] == (0, 1)
    # nothing else shows itself: the rank that saw it is named after the wait, or at once
    # when every rank has ended
    assert first([EXIT_RANK_LOST, None], since - BLAME_WAIT_SECONDS)[0] == (0, EXIT_RANK_LOST)
    assert first([EXIT_RANK_LOST, EXIT_RANK_LOST], since)[0] == (0, EXIT_RANK_LOST)


def _columns(rows: int, sources: list[int]) -> dict[str, torch.Tensor]:
    return {"actions": torch.arange(rows, dtype=torch.int64),
            "sources": torch.tensor(sources, dtype=torch.int16)}


def test_shards_merge_with_one_list_of_sources_and_split_in_equal_shares() -> None:
    shards = [{"buffer": _columns(3, [0, 2, 2]), "sources": ["in-process", "(others)", "local-0"]},
              {"buffer": _columns(2, [2, 0]), "sources": ["in-process", "(others)", "local-1"]}]
    merged = merge_shards(shards)
    assert merged["sources"] == ["in-process", "(others)", "local-0", "local-1"]
    names = [merged["sources"][index] for index in merged["buffer"]["sources"].tolist()]
    assert names == ["in-process", "local-0", "local-0", "local-1", "in-process"]
    assert merged["buffer"]["actions"].tolist() == [0, 1, 2, 0, 1]
    shares = split_buffer(merged["buffer"], 2)
    assert [share["actions"].tolist() for share in shares] == [[0, 1], [2, 0, 1]]
    assert sum(len(share["actions"]) for share in split_buffer(merged["buffer"], 3)) == 5
    assert [len(share["actions"]) for share in split_buffer({"actions": torch.zeros(0)}, 2)] == [0, 0]


def test_synchronised_batch_norm_is_plain_batch_norm_in_one_process() -> None:
    trainer = Trainer.build(load_config(None, TINY), threading.Event(), 1)
    observations = torch.randn(6, *trainer.model.stem[0].weight.shape[1:2], 9, 9)
    trainer.model.train()
    expected = trainer.model(observations)
    before = weights_checksum(trainer.model)
    assert synchronise_batch_norm(trainer.model) == 4  # stem, two in the block, value head
    assert weights_checksum(trainer.model) == before  # the same state, the same names
    trainer.model.load_state_dict(Trainer.build(load_config(None, TINY), threading.Event(), 1)
                                  .model.state_dict())
    got = trainer.model(observations)
    assert torch.allclose(got.logits, expected.logits, atol=1e-5)


def _run_ranks(world: int, data: Path, out: Path, overrides: list[str]) -> None:
    port = free_port()
    processes = [subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "rank_update.py"), str(data), str(out), *overrides],
        env={**os.environ, "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}, cwd=ROOT)
        for rank in range(world)]
    try:
        for process in processes:
            assert process.wait(timeout=180) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_one_update_on_two_ranks_matches_one_rank(tmp_path: Path) -> None:
    """Same data, same start: 2 ranks with half the batch each make the update 1 rank
    makes (gradients, batch-norm statistics, advantage normalisation and the KL stop are
    all taken over both).

    What must agree is compared before an optimizer can amplify rounding: the reduced
    gradients of every step, the update's figures, and the weights after steps linear
    in the gradient (SGD). Adam divides each step by the root of its own second moment,
    so where a gradient is near zero a few ulps of difference (two ranks sum in another
    order than one) change the step by up to its whole size: after Adam every weight
    agrees within twice the steps' sizes, and most weights far closer."""
    config = load_config(None, TINY)
    trainer = Trainer.build(config, threading.Event(), 1)
    initial = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    columns = {name: torch.from_numpy(getattr(batch, name).copy()) for name in
               EpochBatch.__dataclass_fields__}
    torch.save({"model": initial, "batch": columns}, tmp_path / "data.pt")
    expected = updates(TINY, initial, columns)
    _run_ranks(2, tmp_path / "data.pt", tmp_path / "out.pt", TINY)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    lr = config.train.learning_rate

    sgd, sgd_expected = got["sgd"], expected["sgd"]
    assert len(sgd["gradients"]) == len(sgd_expected["gradients"]) == 3  # ppo_passes, no KL stop
    for step, (grads, grads_expected) in enumerate(zip(sgd["gradients"], sgd_expected["gradients"],
                                                       strict=True)):
        for index, (grad, grad_expected) in enumerate(zip(grads, grads_expected, strict=True)):
            scale = float(grad_expected.abs().max())
            assert torch.allclose(grad, grad_expected, rtol=1e-3, atol=1e-4 * scale + 1e-9), \
                (step, index, float((grad - grad_expected).abs().max()), scale)
    for key, value in sgd_expected["model"].items():
        assert torch.allclose(sgd["model"][key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    moved = max(float((value.float() - initial[key].float()).abs().max())
                for key, value in sgd_expected["model"].items() if key in dict(trainer.model.named_parameters()))
    assert moved > 1e-6  # the update did something to compare
    for name in ("grad_norm", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
                 "explained_variance", "ppo_passes", "search_targets"):
        assert np.isclose(sgd["figures"][name], sgd_expected["figures"][name], rtol=1e-4, atol=1e-6), name

    adam, adam_expected = got["adam"], expected["adam"]
    steps = len(adam_expected["gradients"])
    assert len(adam["gradients"]) == steps
    parameters = dict(trainer.model.named_parameters())
    close = []
    for key in parameters:
        difference = (adam["model"][key].float() - adam_expected["model"][key].float()).abs()
        # each Adam step moves a weight by at most lr * (1 - beta1) / sqrt(1 - beta2)
        # (about 3.2 lr), in either run
        assert float(difference.max()) <= 2 * steps * 3.2 * lr, key
        close.append(float((difference <= lr / 10).float().mean()))
    assert min(close) > 0.9, close  # each rank on its own half would move most by about lr
