"""Stopping processes, the one way: ask, wait, then kill, children included.

Keisei's library starts no process; the learner's local actors, its rating jobs and
the evaluation's engines are started elsewhere and all stopped here. A process is
anything with ``pid``, ``poll``, ``terminate`` and ``kill`` (``subprocess.Popen``).
A child asks, as it starts, to be stopped with its parent (``die_with_parent``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Protocol

import psutil

logger = logging.getLogger(__name__)


class Process(Protocol):
    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def wait_for_exit(process: Process, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``process`` to exit (reaping it); True if it has."""
    deadline = time.monotonic() + seconds
    while process.poll() is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop_processes(processes: Sequence[Process], grace_seconds: float = 3.0) -> None:
    """Stop every process and everything each started: SIGTERM to all, wait up to
    ``grace_seconds``, SIGKILL what is left, then kill their descendants (which may have
    outlived them, or were left in a session one of them led). Idempotent; processes
    already gone are skipped."""
    descendants: list[psutil.Process] = []
    for process in processes:
        try:
            descendants += psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for escalate in ("terminate", "kill"):
        alive = [process for process in processes if process.poll() is None]
        for process in alive:
            process.terminate() if escalate == "terminate" else process.kill()
        deadline = time.monotonic() + grace_seconds
        for process in alive:
            wait_for_exit(process, max(deadline - time.monotonic(), 0.0))
    for process in processes:
        if process.poll() is None:
            logger.error("process %d survived kill", process.pid)
    for child in descendants + _session_members({process.pid for process in processes}):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _session_members(leaders: set[int]) -> list[psutil.Process]:
    """Processes still in the session a stopped process led (started with
    ``start_new_session``), though their parent died before we could list them."""
    found = []
    for candidate in psutil.process_iter():
        try:
            if candidate.pid not in leaders and os.getsid(candidate.pid) in leaders:
                found.append(candidate)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def stop_process_tree(process: Process, grace_seconds: float = 3.0) -> None:
    """``stop_processes`` for one process."""
    stop_processes([process], grace_seconds)


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a child, before it runs: have the kernel send it SIGTERM when its parent dies,
    however it dies (SIGKILL included), so that no local actor outlives its learner and
    no evaluation worker its ``keisei-eval`` (Linux; elsewhere a no-op, and an actor's own
    learner timeout applies). ``parent`` is the parent's pid where the child runs this
    well after it started (a pool worker's initializer): a child whose parent is already
    gone stops at once."""
    if sys.platform.startswith("linux"):
        expected = os.getppid() if parent is None else parent
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != expected:  # it died before the request
            os.kill(os.getpid(), signal.SIGTERM)
