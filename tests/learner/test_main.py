"""keisei-learner's exit codes for what goes wrong outside the training maths."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port_pair

import keisei.runs as runs
from learner.main import main

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=48", "train.steps_per_epoch=128", "train.minibatch_size=64",
        "train.ppo_passes=1", "run.threads=1", "checkpoint.every_epochs=1", "display.mode=plain",
        "evaluation.every_epochs=0", "train.total_steps=512"]


def arguments(run_dir: Path, *extra: str) -> list[str]:
    return [item for override in [*TINY, f"run.dir={run_dir}", *extra] for item in ("--set", override)]


def test_a_full_disk_stops_training_with_one_line_and_exit_code_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    real = runs.save_checkpoint

    def full_after_the_first(directory, step, state, keep):  # type: ignore[no-untyped-def]
        if step > 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(directory, step, state, keep)

    monkeypatch.setattr(runs, "save_checkpoint", full_after_the_first)
    assert main(arguments(tmp_path / "run")) == 1
    err = capfd.readouterr().err
    assert "training stopped at step 128: [Errno 28] No space left on device" in err
    assert "--resume continues from" in err and "checkpoint-000000000000.pt" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:65535", "tcp://127.0.0.1",
                                  "ipc:///tmp/x"])
def test_a_bind_address_without_a_usable_port_pair_is_refused(
        bind: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main([*arguments(tmp_path / "run"), "--remote-actors", "--bind", bind]) == 2
    assert "--bind" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_bind_exits_2_and_leaves_the_directory_free(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port_pair()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert main([*arguments(tmp_path / "run", "train.total_steps=128"), "--remote-actors",
                     "--bind", f"tcp://127.0.0.1:{port}"]) == 2
    assert "cannot bind" in capfd.readouterr().err
    assert main(arguments(tmp_path / "run", "train.total_steps=128")) == 0  # a new run, same folder


def test_a_finished_run_says_so_and_its_status_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main(arguments(run_dir, "train.total_steps=128")) == 0
    status = json.loads((run_dir / "status.json").read_text())  # written at exit, no actors
    assert (status["state"], status["step"], status["total_steps"]) == ("finished", 128, 128)
    assert status["actors"] == [] and status["ended"] <= time.time()
    capsys.readouterr()
    assert main(["--status", "--set", f"run.dir={run_dir}"]) == 0  # however old: it finished
    assert f"{run_dir}: finished at step 128 of 128" in capsys.readouterr().out
    status["state"] = "interrupted"
    (run_dir / "status.json").write_text(json.dumps(status))
    assert main(["--status", "--set", f"run.dir={run_dir}"]) == 1
    printed = capsys.readouterr()
    assert "was interrupted at step 128" in printed.out and "--resume" in printed.err


def test_the_status_health_check_does_not_import_torch(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    status = {"mode": "distributed", "step": 4096, "epoch": 2, "policy_version": 2, "pid": 1,
              "time": time.time(), "actors": [], "transitions": []}
    (run_dir / "status.json").write_text(json.dumps(status))
    script = ("import sys; from learner.main import main; "
              f"code = main(['--status', '--set', 'run.dir={run_dir}']); "
              "print('torch' in sys.modules, code)")
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert answer.stdout.splitlines()[-1] == "False 0", answer.stdout + answer.stderr
    assert "mode distributed, step 4096" in answer.stdout
    status["time"] = time.time() - 3600  # a learner that stopped answering
    (run_dir / "status.json").write_text(json.dumps(status))
    stale = subprocess.run([sys.executable, "-m", "learner.main", "--status", "--set",
                            f"run.dir={run_dir}"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "not responding" in stale.stderr
    (run_dir / "status.json").unlink()  # no learner has written one: unhealthy, not Docker's reserved 2
    missing = subprocess.run([sys.executable, "-m", "learner.main", "--status", "--set",
                              f"run.dir={run_dir}"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no readable status" in missing.stderr
