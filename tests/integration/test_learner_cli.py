"""keisei-learner as a user runs it: a real process, stopped with SIGTERM and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
from helpers import free_port_pair, learner_command, metrics_lines

from keisei.checkpoint import latest_checkpoint, load_checkpoint
from keisei.kifu import read_csa, read_kif


@contextmanager
def started(command: list[str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_sigterm_checkpoints_and_resume_continues_the_counters(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with started(learner_command(run_dir, "train.total_steps=1000000")) as process:
        deadline = time.monotonic() + 120
        while len(metrics_lines(run_dir)) < 3:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "received SIGTERM" in output
    lines_before = len(metrics_lines(run_dir))
    stopped = metrics_lines(run_dir)[-1]
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    counters = checkpoint["counters"]
    assert counters["step"] == stopped["step"] and counters["policy_version"] == stopped["policy_version"]
    assert counters["step"] == 128 * stopped["epoch"]

    target = stopped["step"] + 256
    resumed = subprocess.run([*learner_command(run_dir, f"train.total_steps={target}"), "--resume"],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert len(metrics_lines(run_dir)) == lines_before + 2
    new_lines = metrics_lines(run_dir)[-2:]
    assert [line["epoch"] for line in new_lines] == [stopped["epoch"] + 1, stopped["epoch"] + 2]
    assert new_lines[0]["policy_version"] == stopped["policy_version"] + 1
    assert new_lines[-1]["step"] == target
    final = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert final["counters"]["step"] == target
    kif = sorted((run_dir / "games").glob("game-*.kif"))[-1]  # a sample game per checkpoint
    replayed = read_kif(kif.read_text(encoding="cp932"), max_plies=64)
    assert replayed.outcome is not None
    assert read_csa(kif.with_suffix(".csa").read_text(), max_plies=64).moves == replayed.moves
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["train"]["total_steps"] == target and saved["model"]["channels"] == 16


def test_bad_config_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    run_dir = tmp_path / "never"
    config.write_text(f'[run]\ndir = "{run_dir}"\n[train]\ntotal_stpes = 10\nsteps_per_epoch = 3\n')
    result = subprocess.run([sys.executable, "-m", "learner.main", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "train.total_stpes: unknown key" in result.stderr
    assert "train.steps_per_epoch = 3: out of range" in result.stderr
    assert not run_dir.exists()


def test_existing_run_is_not_overwritten_and_missing_run_is_not_resumed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(learner_command(run_dir, "train.total_steps=128"), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    again = subprocess.run(learner_command(run_dir, "train.total_steps=128"), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    missing = subprocess.run([*learner_command(tmp_path / "none"), "--resume"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no run to resume" in missing.stderr
    assert not (tmp_path / "none").exists()


def test_print_config_prints_the_effective_toml() -> None:
    result = subprocess.run([sys.executable, "-m", "learner.main", "--print-config",
                             "--set", "train.total_steps=777"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert tomllib.loads(result.stdout)["train"]["total_steps"] == 777


def test_ratings_during_training_are_tabled_checkpointed_and_kept_on_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rate = ["evaluation.every_epochs=2", "evaluation.games=4", "evaluation.pool_size=2",
            "evaluation.max_plies=60"]
    done = subprocess.run(learner_command(run_dir, "train.total_steps=512", *rate),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = json.loads((run_dir / "ratings.json").read_text())
    assert table["table"]["random"] == 0.0 and "greedy" in table["table"]
    rated = [name for name, _ in table["rated"]]
    assert rated[0] == "step-000000000256"
    assert table["rated"][-1] == ["step-000000000512", 512]  # the final policy is rated too
    assert any(p["first"] == "greedy" and p["second"] == "random" for p in table["pairings"])  # calibration
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4] and all("mode" in line for line in lines)
    # Whether a job finishes before the last epoch depends on timing; the fields a finished
    # job adds to an epoch's line are pinned in tests/learner/test_ratings.py.
    for rated_line in (line for line in lines if "elo" in line):
        assert rated_line["ratings"]["random"] == 0.0
        assert rated_line["elo"] == rated_line["ratings"][f"step-{rated_line['elo_step']:012d}"]
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert checkpoint["ratings"]["table"] == table["table"]

    resumed = subprocess.run([*learner_command(run_dir, "train.total_steps=1024", *rate), "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((run_dir / "ratings.json").read_text())
    rated_after = [name for name, _ in after["rated"]]
    assert rated_after[:len(rated)] == rated and len(rated_after) > len(rated)
    assert after["rated"][-1] == ["step-000000001024", 1024]
    newest = [p for p in after["pairings"] if p["first"] == rated_after[-1]]
    assert {p["second"] for p in newest} >= {"random", "greedy", rated_after[-2]}  # the pool
    assert sum(p["first"] == "greedy" and p["second"] == "random" for p in after["pairings"]) == 1


def test_a_kill_before_the_first_checkpoint_leaves_a_run_that_resumes(tmp_path: Path) -> None:
    """SIGKILL after some epochs but before checkpoint.every_epochs: the run directory
    holds the step-0 checkpoint, --resume continues from it, and the metrics lines of the
    lost epochs are replaced, not repeated."""
    run_dir = tmp_path / "run"
    with started(learner_command(run_dir, "train.total_steps=1000000",
                                 "checkpoint.every_epochs=1000")) as process:
        deadline = time.monotonic() + 120
        while len(metrics_lines(run_dir)) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        process.kill()
        process.wait(timeout=30)
    assert [path.name for path in (run_dir / "checkpoints").glob("*.pt")] == ["checkpoint-000000000000.pt"]
    again = subprocess.run(learner_command(run_dir, "train.total_steps=256"), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    resumed = subprocess.run([*learner_command(run_dir, "train.total_steps=256"), "--resume"],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert [line["step"] for line in metrics_lines(run_dir)] == [128, 256]


def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(learner_command(run_dir, "train.total_steps=384"), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    newest = latest_checkpoint(run_dir / "checkpoints")
    assert newest is not None and newest.name == "checkpoint-000000000384.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    (run_dir / "checkpoints" / ".checkpoint-000000000512.pt-x1.tmp").write_bytes(b"partial")
    resumed = subprocess.run([*learner_command(run_dir, "train.total_steps=512"), "--resume"],
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping checkpoint" in resumed.stderr and "checkpoint-000000000384.pt" in resumed.stderr
    assert "resumed from" in resumed.stderr and "checkpoint-000000000256.pt" in resumed.stderr
    assert [line["step"] for line in metrics_lines(run_dir)] == [128, 256, 384, 512]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_local_actors_die_with_a_killed_learner(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    port = free_port_pair()
    command = [*learner_command(run_dir, "train.total_steps=1000000"), "--local-actors", "2",
               "--bind", f"tcp://127.0.0.1:{port}"]
    with started(command) as process:
        deadline = time.monotonic() + 120
        while len(metrics_lines(run_dir)) < 1 or len(actor_pids(port)) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.1)
        actors = actor_pids(port)
        process.kill()
        process.wait(timeout=30)
    gone = psutil.wait_procs([psutil.Process(pid) for pid in actors if psutil.pid_exists(pid)],
                             timeout=20)[1]
    assert not gone, f"actors outlived their learner: {gone}"


def actor_pids(port: int) -> list[int]:
    found = []
    for candidate in psutil.process_iter(["cmdline", "status"]):
        cmdline = candidate.info["cmdline"] or []
        if "workers.actor" in cmdline and f"tcp://127.0.0.1:{port}" in cmdline \
                and candidate.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(candidate.pid)
    return found


def test_resume_auto_starts_fresh_then_continues(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = subprocess.run([*learner_command(run_dir, "train.total_steps=128"), "--resume", "auto"],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert [line["step"] for line in metrics_lines(run_dir)] == [128]
    again = subprocess.run([*learner_command(run_dir, "train.total_steps=256", "run.resume=auto")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr
    assert [line["step"] for line in metrics_lines(run_dir)] == [128, 256]
    never = subprocess.run(learner_command(run_dir, "train.total_steps=384"), capture_output=True,
                           text=True, timeout=60)
    assert never.returncode == 2 and "--resume auto" in never.stderr
