"""The world a trainer test runs in: a test that takes the ``world`` fixture runs twice,
in a world of one (this process) and as two gloo ranks (two processes on loopback).

For the two-rank case the test is run again, by node id, in two pytest processes with
torchrun's variables set; each of them builds its rank of the world, and the test here
passes when both of them pass. Every rank runs the same test body, so they call the
collectives in the same order."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from learner.launch import RankInfo, free_port
from learner.ranks import Alone, Ranks, World

ROOT = Path(__file__).resolve().parents[2]
RANK_TEST_SECONDS = 240.0
"""How long both ranks may take over one test (each collective itself times out in 60 s)."""
WORLDS = ["one", "two-ranks"]


def run_on_two_ranks(nodeid: str) -> None:
    """Run the test ``nodeid`` as two gloo ranks; fail with each rank's output unless both
    pass. Both processes are always reaped."""
    port = free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", nodeid],
        env={**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)]
    outputs: list[str] = []
    try:
        for process in processes:
            try:
                output, _ = process.communicate(timeout=RANK_TEST_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
                output += f"\n(timed out after {RANK_TEST_SECONDS:.0f} s)"
            outputs.append(output)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failed = [rank for rank, process in enumerate(processes) if process.returncode != 0]
    if failed:
        pytest.fail("on two ranks: " + "\n".join(
            f"--- rank {rank} (exit {processes[rank].returncode}) ---\n{outputs[rank][-4000:]}"
            for rank in failed), pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    callspec = getattr(pyfuncitem, "callspec", None)
    if callspec is None or callspec.params.get("world") != "two-ranks" or RankInfo.from_env():
        return None
    run_on_two_ranks(pyfuncitem.nodeid)
    return True  # called: in the two rank processes


@pytest.fixture(scope="session")
def _ranks() -> Iterator[Ranks]:
    """This process's rank of the two (in a rank process only): one group per process."""
    info = RankInfo.from_env()
    assert info is not None
    import torch

    with Ranks(info, torch.device("cpu"), 60.0) as ranks:
        yield ranks


@pytest.fixture(params=WORLDS)
def world(request: pytest.FixtureRequest) -> World | None:
    """A world of one, or (in the rank processes) this process's rank of two; None in the
    process that starts the rank processes, which does not run the test body."""
    if request.param == "one":
        return Alone()
    if RankInfo.from_env() is None:
        return None
    ranks: Ranks = request.getfixturevalue("_ranks")
    return ranks


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A rank process ends with pytest's verdict, skipping the interpreter's teardown:
    gloo's threads can abort it after a clean run (see ``learner.main.leave_rank``)."""
    if RankInfo.from_env() is not None and _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
