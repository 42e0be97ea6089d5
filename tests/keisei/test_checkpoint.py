"""Checkpoints are atomic, pruned, safe to load, and refuse what they cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from keisei.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def state(step: int) -> dict:
    return {"model": {"weight": torch.full((2, 2), float(step))}, "config": {"run": {"seed": 1}},
            "counters": {"step": step}, "rng": {"python": (3, tuple(range(5)), None)}}


def test_save_keeps_the_last_k_and_loads_back(tmp_path: Path) -> None:
    for step in (100, 200, 300, 400):
        save_checkpoint(tmp_path, step, state(step), keep=2)
    names = [path.name for path in list_checkpoints(tmp_path)]
    assert names == ["checkpoint-000000000300.pt", "checkpoint-000000000400.pt"]
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert loaded["counters"]["step"] == 400 and loaded["format_version"] == 2
    assert torch.equal(loaded["model"]["weight"], torch.full((2, 2), 400.0))
    assert not list(tmp_path.glob(".checkpoint-*"))  # no temporary files left behind


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, state(1), keep=3)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, {**state(2), "bad": Unsaveable()}, keep=3)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-000000000001.pt"]
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_bad_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "checkpoint-000000000001.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")
    future = tmp_path / "future.pt"
    torch.save({**state(1), "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(future)
    partial = tmp_path / "partial.pt"
    torch.save({"format_version": 1, "model": {}}, partial)
    with pytest.raises(CheckpointError, match="missing config, counters"):
        load_checkpoint(partial)


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({**state(1), "payload": Path("/etc/passwd")}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_damage_on_disk_is_detected_not_loaded(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 7, {**state(7), "model": {"weight": torch.full((64,), 7.0)}}, keep=3)
    data = bytearray(path.read_bytes())
    offset = data.find(torch.full((64,), 7.0).numpy().tobytes())
    assert offset > 0
    flipped = tmp_path / "flipped.pt"
    data[offset + 5] ^= 0x10  # one bit of one weight
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(flipped)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable") as info:
        load_checkpoint(truncated)
    assert "\n" not in str(info.value)  # one line, not torch's multi-line text
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(empty)


def test_non_finite_weights_are_refused_and_old_files_without_a_checksum_load(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {**state(1), "model": {"weight": torch.tensor([1.0, float("nan")])}},
                    keep=3)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_checkpoint(latest_checkpoint(tmp_path))
    old = tmp_path / "format-1.pt"
    torch.save({**state(5), "format_version": 1}, old)  # written before checksums existed
    assert load_checkpoint(old)["counters"]["step"] == 5


def test_the_checksum_covers_every_kind_of_tensor(tmp_path: Path) -> None:
    tensors = {"scalar": torch.tensor(3), "bf16": torch.ones(3, dtype=torch.bfloat16),
               "empty": torch.zeros(0), "strided": torch.arange(10)[::2], "flag": torch.tensor([True])}
    path = save_checkpoint(tmp_path, 1, {**state(1), "optimizer": tensors}, keep=1)
    assert torch.equal(load_checkpoint(path)["optimizer"]["strided"], torch.arange(10)[::2])
