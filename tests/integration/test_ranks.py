"""keisei-learner --ranks 2 as a user runs it: two real learner processes on gloo, each
with its own actors, resumed on another number of ranks, and a rank killed."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import learner_command, metrics_lines

from keisei.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow


def free_ports(count: int) -> int:
    """A port P with P .. P + count - 1 all free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 60_000)
        sockets = []
        try:
            for offset in range(count):
                probe = socket.socket()
                sockets.append(probe)
                probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
        return port
    raise RuntimeError("no free run of ports found")


def run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def held_steps(run_dir: Path) -> int:
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    return len(checkpoint["buffer"]["actions"])


@pytest.mark.e2e
def test_two_ranks_train_together_with_their_own_actors_and_resume_on_any_number(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    port = free_ports(4)
    command = learner_command(run_dir, "train.total_steps=1024", "ranks.checksum_every=1",
                              "supervisor.collect_timeout=60")
    done = run([*command, "--ranks", "2", "--local-actors", "1",
                "--bind", f"tcp://127.0.0.1:{port}"])
    assert done.returncode == 0, done.stdout[-4000:]
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == list(range(1, 9))
    assert lines[-1]["step"] == 1024  # steps of both ranks: 64 a rank an epoch
    for line in lines:
        assert line["ranks"] == 2 and len(line["rank_ledgers"]) == 2
        assert all(ledger["balanced"] for ledger in line["rank_ledgers"]), line["rank_ledgers"]
        assert line["weights_agree"] is True and len(line["weights_checksum"]) == 16
        assert line["ledger"]["trained"] == sum(ledger["trained"] for ledger in line["rank_ledgers"])
    assert [ledger["trained"] for ledger in lines[-1]["rank_ledgers"]] == [512, 512]
    # every rank ran its own actor on its own ports, and both delivered games
    delivered = {row["actor_id"] for line in lines for row in line.get("actors", [])
                 if row["steps_received"] > 0}
    assert delivered == {"rank0-local-0", "rank1-local-0"}, delivered
    assert (run_dir / "ranks" / "rank-1" / "status.json").is_file()
    assert (run_dir / "ranks" / "rank-1" / "actors" / "rank1-local-0.log").is_file()
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert checkpoint["ranks"] == 2 and checkpoint["counters"]["step"] == 1024
    sources = set(checkpoint["counters"]["sources"])
    assert {"rank0-local-0", "rank1-local-0"} & sources or held_steps(run_dir) == 0
    waiting = held_steps(run_dir)

    # the same run on one rank: every waiting step of both shards comes back
    done = run([*learner_command(run_dir, "train.total_steps=1280"), "--resume"])
    assert done.returncode == 0, done.stdout[-4000:]
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines[-2:]] == [9, 10] and "ranks" not in lines[-1]
    assert lines[-2]["ledger"]["carried"] == waiting
    assert lines[-1]["ledger"]["trained"] == 256 and lines[-1]["step"] == 1280

    # and back on two ranks: rank 0 deals the one rank's waiting steps out
    waiting = held_steps(run_dir)
    done = run([*learner_command(run_dir, "train.total_steps=1536", "ranks.checksum_every=1"),
                "--ranks", "2", "--resume"])
    assert done.returncode == 0, done.stdout[-4000:]
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines[-2:]] == [11, 12] and lines[-1]["ranks"] == 2
    assert sum(ledger["carried"] for ledger in lines[-2]["rank_ledgers"]) == waiting
    assert abs(lines[-2]["rank_ledgers"][0]["carried"] - lines[-2]["rank_ledgers"][1]["carried"]) <= 1
    assert lines[-1]["weights_agree"] is True


def wait_for_epochs(launcher: subprocess.Popen[str], run_dir: Path, epochs: int) -> None:
    """Until ``run_dir`` has ``epochs`` metrics lines; fail if the job ends or stalls."""
    deadline = time.monotonic() + 180
    while len(metrics_lines(run_dir)) < epochs:
        assert launcher.poll() is None, launcher.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no progress within 180 s"
        time.sleep(0.1)


def test_a_killed_rank_ends_the_job_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = learner_command(run_dir, "train.total_steps=100000000")
    launcher = subprocess.Popen([*command, "--ranks", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    ranks: list[psutil.Process] = []
    try:
        wait_for_epochs(launcher, run_dir, 2)
        ranks = psutil.Process(launcher.pid).children()
        by_rank = {int(child.environ()["RANK"]): child for child in ranks}
        by_rank[1].send_signal(signal.SIGKILL)
        output, _ = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 1, output[-4000:]
    assert f"rank 1 (pid {by_rank[1].pid}) was killed by SIGKILL" in output, output[-4000:]
    assert "the job ended because rank 1 was killed by SIGKILL" in output
    gone = psutil.wait_procs(ranks, timeout=10)[1]
    assert not gone, f"ranks still running: {gone}"
    step = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["counters"]["step"]
    assert step >= 128

    done = run([*learner_command(run_dir, f"train.total_steps={step + 256}"), "--ranks", "2",
                "--resume"])
    assert done.returncode == 0, done.stdout[-4000:]
    assert metrics_lines(run_dir)[-1]["step"] == step + 256


def test_sigterm_stops_every_rank_with_a_checkpoint_of_every_shard(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen([*learner_command(run_dir, "train.total_steps=100000000"),
                                 "--ranks", "2", "--local-actors", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_epochs(launcher, run_dir, 2)
        launcher.send_signal(signal.SIGTERM)
        output, _ = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 130, output[-4000:]
    assert output.count("interrupted at step") == 2 and "ERROR" not in output, output[-4000:]
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert checkpoint["ranks"] == 2
    assert checkpoint["counters"]["step"] == metrics_lines(run_dir)[-1]["step"]


def torchrun_nodes(run_dir: Path, port: int, rendezvous: int, *overrides: str,
                   resume: bool = False, timeout: float = 300) -> list[str]:
    """Two ``torchrun --nnodes 2`` launchers, each a node of one rank with one local actor,
    meeting by c10d rendezvous on loopback, run to the end; their outputs (each must
    exit 0). Gloo is kept on the loopback interface."""
    command = [str(Path(sys.executable).parent / "torchrun"), "--nnodes", "2",
               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{rendezvous}", "--rdzv-id", "keisei-test",
               "--local-addr", "127.0.0.1", "-m", "learner.main",
               *learner_command(run_dir, "ranks.checksum_every=1", "supervisor.collect_timeout=60",
                                *overrides)[3:],
               "--local-actors", "1", "--bind", f"tcp://127.0.0.1:{port}",
               *(["--resume"] if resume else [])]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
             for _ in range(2)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=timeout)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-4000:]
    return outputs


@pytest.mark.e2e
def test_two_torchrun_nodes_train_with_actors_on_both_and_resume(tmp_path: Path) -> None:
    """What the README tells users of several machines, run for real: two torchrun
    launchers as two nodes (c10d rendezvous on loopback), actors on both, to a checkpoint,
    then a resume of the same run by both."""
    run_dir = tmp_path / "run"
    port, rendezvous = free_ports(4), free_ports(1)
    torchrun_nodes(run_dir, port, rendezvous, "train.total_steps=512")
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4] and lines[-1]["step"] == 512
    for line in lines:
        assert line["ranks"] == 2 and line["weights_agree"] is True
        assert all(ledger["balanced"] for ledger in line["rank_ledgers"]), line["rank_ledgers"]
    delivered = {row["actor_id"] for line in lines for row in line.get("actors", [])
                 if row["steps_received"] > 0}
    assert delivered == {"rank0-local-0", "rank1-local-0"}, delivered
    assert (run_dir / "ranks" / "rank-1" / "status.json").is_file()
    checkpoint = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert checkpoint["ranks"] == 2 and checkpoint["counters"]["step"] == 512
    waiting = held_steps(run_dir)

    outputs = torchrun_nodes(run_dir, port, free_ports(1), "train.total_steps=768", resume=True)
    assert any("resumed from" in output for output in outputs)
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6] and lines[-1]["step"] == 768
    assert sum(ledger["carried"] for ledger in lines[-2]["rank_ledgers"]) == waiting
    assert lines[-1]["weights_agree"] is True
