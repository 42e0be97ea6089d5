"""bench.pretraining: --games 0 stops at the network, and bad arguments stop before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import pretraining


def _never(command: list[str]) -> None:
    raise AssertionError(f"ran {command}")


def _finished_phases(work: Path) -> Path:
    """A work folder whose generation and pre-training are done, as a resumed run finds it."""
    (work / "records").mkdir(parents=True)
    (work / "records" / "summary.json").write_text(json.dumps(
        {"games": 12, "positions": 1300, "seconds": 60.0, "plies_per_second": 21.7,
         "results": {"checkmate": 12}}))
    pretrain = work / "pretrain"
    (pretrain / "checkpoints").mkdir(parents=True)
    checkpoint = pretrain / "checkpoints" / "checkpoint-000000000512.pt"
    checkpoint.write_bytes(b"")
    (pretrain / "done").write_text("")
    lines = [{"step": step, "epoch": epoch, "seconds": seconds, "val_accuracy": accuracy,
              "val_policy_loss": 4.0 - accuracy, "val_value_loss": 0.5, "val_positions": 100}
             for step, epoch, seconds, accuracy in ((0, 0.0, 0.0, 0.01), (512, 0.4, 30.0, 0.2))]
    (pretrain / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return checkpoint


def test_no_games_prints_the_network_and_plays_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = _finished_phases(tmp_path)
    monkeypatch.setattr(pretraining, "run", _never)
    monkeypatch.setattr(sys, "argv", ["bench.pretraining", "--work", str(tmp_path), "--games", "0"])
    pretraining.main()
    out = capsys.readouterr().out
    assert "generated: 12 games, 1300 positions" in out
    assert "held-out top-1 0.010 -> 0.200" in out
    assert f"network: {checkpoint}" in out
    assert " vs " not in out and not (tmp_path / "eval").exists()


@pytest.mark.parametrize(("argv", "named"), [
    (["--rungs", "fsf-d1,no-such-engine"], "no-such-engine"),
    (["--games", "-2"], "--games must be 0"),
])
def test_bad_arguments_stop_before_any_phase(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], named: str) -> None:
    monkeypatch.setattr(pretraining, "run", _never)
    monkeypatch.setattr(sys, "argv", ["bench.pretraining", "--work", str(tmp_path / "w"), *argv])
    with pytest.raises(SystemExit) as stopped:
        pretraining.main()
    assert stopped.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
