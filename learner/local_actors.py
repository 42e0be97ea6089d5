"""Local actor processes the learner starts on its own machine, and always reaps."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import psutil

from keisei.processes import die_with_parent, stop_process_tree, stop_processes

logger = logging.getLogger(__name__)


ACTOR_NICE = 19
"""Local actors run at the lowest CPU priority: they share the learner's cores, so the PPO
update comes first and they play in the time it leaves idle (between its parallel
kernels, and while the learner waits for games, when they have every core)."""


class LocalActors:
    """``count`` ``keisei-actor`` processes connected to ``endpoint``.

    Each runs in its own session, so a terminal's Ctrl-C reaches only the learner.
    ``close`` sends SIGTERM (an actor's clean stop: it sends ``bye`` and exits), waits,
    then kills whatever is left. Their logs go to ``log_dir/<actor id>.log``.
    """

    def __init__(self, count: int, endpoint: str, log_dir: Path, threads: int = 1,
                 prefix: str = "local", nice: int = ACTOR_NICE) -> None:
        self.count = count
        self.nice = nice
        self.prefix = prefix  # actor ids are ``<prefix>-<index>``
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.threads = threads
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> LocalActors:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(self.count):
                self.start(f"{self.prefix}-{index}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def start(self, actor_id: str, *options: str) -> subprocess.Popen[bytes]:
        """Start ``keisei-actor`` as ``actor_id``, with any further command-line ``options``."""
        command = [sys.executable, "-m", "workers.actor", "--learner", self.endpoint,
                   "--actor-id", actor_id, "--threads", str(self.threads),
                   "--nice", str(self.nice), *options]
        with open(self.log_dir / f"{actor_id}.log", "ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=die_with_parent)
        self.processes[actor_id] = process
        logger.info("started local actor %s (pid %d)", actor_id, process.pid)
        return process

    def dead_reason(self, actor_id: str) -> str | None:
        """Why actor ``actor_id``'s process is not running (exited, zombie), or None."""
        process = self.processes.get(actor_id)
        if process is None:
            return None
        code = process.poll()
        if code is not None:
            return f"exited with code {code}"
        try:
            if psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE:
                return "is a zombie"
        except psutil.NoSuchProcess:
            return "has disappeared"
        return None

    def stop(self, actor_id: str, grace_seconds: float = 3.0) -> None:
        """Stop one actor and its children: terminate, then kill."""
        process = self.processes.get(actor_id)
        if process is not None:
            stop_process_tree(process, grace_seconds)

    def close(self, grace_seconds: float = 5.0) -> None:
        """Terminate every actor, wait, then kill what is left, children included (idempotent)."""
        stop_processes(list(self.processes.values()), grace_seconds)
