"""Starting the ranks of a multi-rank learner (``learner.ranks``), without torch.

``RankInfo`` reads torchrun's environment variables; ``launch`` is ``keisei-learner
--ranks N``: it starts N ``keisei-learner`` processes with those variables set, as
torchrun would on one machine, and ends them all when one fails.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from keisei.config import ConfigError

logger = logging.getLogger(__name__)

LAUNCH_GRACE_SECONDS = 30.0
"""After one rank ends, how long ``--ranks`` waits for the others to stop before killing them."""


EXIT_SIGNALLED = 130
EXIT_RANK_LOST = 3
"""A rank's exit code when it ended because another rank of the job left."""
BLAME_WAIT_SECONDS = 5.0
"""How long the launcher waits, after a rank ends because another left, to see which one."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the job (from torchrun's environment variables)."""

    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RankInfo | None:
        """This process's rank, or None when it is the only one (no ``WORLD_SIZE`` > 1).

        :raises ConfigError: if the variables are not numbers or disagree.
        """
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return None
        problems = []
        values = {}
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            text = environ.get(name, "0" if name == "LOCAL_RANK" else "")
            try:
                values[name] = int(text)
            except ValueError:
                problems.append(f"{name}={text!r}: expected a whole number")
        if problems:
            raise ConfigError(problems)
        world, rank = values["WORLD_SIZE"], values["RANK"]
        if world < 1 or not 0 <= rank < world:
            raise ConfigError([f"RANK={rank} WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE"])
        if world == 1:
            return None
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not environ.get(name):
                problems.append(f"{name} is not set: every rank needs rank 0's address "
                                "(torchrun and keisei-learner --ranks set it)")
        if problems:
            raise ConfigError(problems)
        return cls(rank, world, values["LOCAL_RANK"])


def check_divisible(steps_per_epoch: int, minibatch_size: int, world: int) -> None:
    """:raises ConfigError: unless both sizes split evenly over ``world`` ranks."""
    problems = [f"train.{name} = {value} does not split over {world} ranks: make it a "
                f"multiple of {world}"
                for name, value in (("steps_per_epoch", steps_per_epoch),
                                    ("minibatch_size", minibatch_size)) if value % world]
    if problems:
        raise ConfigError(problems)


def rank_bind(bind: str, rank: int) -> str:
    """Rank ``rank``'s ROUTER address: the base port + 2 × rank (its PUB is one above)."""
    head, _, port = bind.rpartition(":")
    return f"{head}:{int(port) + 2 * rank}"


# --- keisei-learner --ranks N ---------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the ranks' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_RANK_LOST:
        return f"exited with code {code} (another rank left)"
    return f"exited with code {code}"


def launch(ranks: int, argv: Sequence[str], grace: float = LAUNCH_GRACE_SECONDS) -> int:
    """Run ``keisei-learner argv`` as ``ranks`` processes on this machine, as torchrun
    would (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` on
    127.0.0.1), and wait for them. SIGINT/SIGTERM are passed on. When one rank ends
    with an error the others are stopped (SIGTERM, then SIGKILL after ``grace`` s) and
    the job ends with its code; a rank killed by a signal ends it with 1.
    """
    port = free_port()
    base = {**os.environ, "WORLD_SIZE": str(ranks), "LOCAL_WORLD_SIZE": str(ranks),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    processes: list[subprocess.Popen[bytes]] = []
    signalled: list[float] = []  # when a stop was passed on

    def forward(signum: int, _frame: object) -> None:
        signalled.append(time.monotonic())
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for rank in range(ranks):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "learner.main", *argv],
                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
            logger.info("rank %d: pid %d", rank, processes[-1].pid)
        failed: tuple[int, int] | None = None
        lost_since: float | None = None  # when a rank first said another one left
        while any(process.poll() is None for process in processes):
            if signalled:  # asked to stop: every rank writes its part, then ends
                if time.monotonic() - signalled[0] > grace:
                    _stop_all(processes, 0.0)
                time.sleep(0.2)
                continue
            if failed is None:
                failed, lost_since = _first_failure(processes, lost_since)
                if failed is not None:
                    rank, code = failed
                    logger.error("rank %d (pid %d) %s; stopping the other ranks", rank,
                                 processes[rank].pid, describe_exit(code))
                    _stop_all(processes, grace)
            time.sleep(0.2)
        codes = [process.returncode for process in processes]
        if failed is None:  # the cause, not a rank that only saw another one leave
            ended = [(rank, code) for rank, code in enumerate(codes) if code]
            failed = next((item for item in ended if item[1] != EXIT_RANK_LOST),
                          ended[0] if ended else None)
            if failed is not None and not (signalled and failed[1] == EXIT_SIGNALLED):
                logger.error("rank %d (pid %d) %s", failed[0], processes[failed[0]].pid,
                             describe_exit(failed[1]))
        if failed is None:
            return 0
        rank, code = failed
        if signalled and code == EXIT_SIGNALLED:
            return code
        logger.error("the job ended because rank %d %s", rank, describe_exit(code))
        return code if code > 0 else 1
    finally:
        _stop_all(processes, grace)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _first_failure(processes: Sequence[subprocess.Popen[bytes]], lost_since: float | None
                   ) -> tuple[tuple[int, int] | None, float | None]:
    """The rank that ended the job, if one has: a rank that failed or was killed. A rank
    that only saw another one leave (``EXIT_RANK_LOST``) is blamed after
    ``BLAME_WAIT_SECONDS`` if no cause has shown itself by then."""
    codes = [process.poll() for process in processes]
    for rank, code in enumerate(codes):
        if code not in (None, 0, EXIT_RANK_LOST):
            return (rank, code), lost_since
    lost = [rank for rank, code in enumerate(codes) if code == EXIT_RANK_LOST]
    if not lost:
        return None, lost_since
    now = time.monotonic()
    if lost_since is None:
        lost_since = now
    if now - lost_since >= BLAME_WAIT_SECONDS or all(code is not None for code in codes):
        return (lost[0], EXIT_RANK_LOST), lost_since
    return None, lost_since


def _stop_all(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.error("pid %d did not stop within %.0f s: killing it", process.pid, grace)
            process.kill()
            process.wait()
