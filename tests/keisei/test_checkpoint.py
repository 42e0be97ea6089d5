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
    assert loaded["counters"]["step"] == 400 and loaded["format_version"] == 1
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
