"""bench.learning: how many engine-game processes run beside self-play, and a missing
engine or a bad count named before any training."""

from __future__ import annotations

import argparse
import os

import pytest

from bench import learning


def _args(*argv: str) -> argparse.Namespace:
    return learning.build_parser().parse_args(list(argv))


def test_beside_workers_default_follows_the_start_and_the_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning, "missing_program", lambda spec: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert learning.beside_workers(_args()) == 1  # from random weights too
    assert learning.beside_workers(_args("--init-from", "start.pt")) == 1
    assert learning.beside_workers(_args("--beside-workers", "1")) == 1
    assert learning.beside_workers(_args("--init-from", "start.pt", "--beside-workers", "0")) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert learning.beside_workers(_args("--init-from", "start.pt")) == 0
    assert learning.beside_workers(_args()) == 0


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(SystemExit, match="--beside-workers must be at least 0"):
        learning.beside_workers(_args("--beside-workers", "-1"))


def test_a_missing_engine_is_named_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit, match=r"--beside-engine usi:no-such-engine: .*'no-such-engine'"):
        learning.beside_workers(_args("--beside-workers", "1", "--beside-engine",
                                      "usi:no-such-engine"))
    # no engine needed where none runs beside
    assert learning.beside_workers(_args("--beside-workers", "0", "--beside-engine",
                                         "usi:no-such-engine")) == 0
