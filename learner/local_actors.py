"""Local actor processes the learner starts on its own machine, and always reaps."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


class LocalActors:
    """``count`` ``keisei-actor`` processes connected to ``endpoint``.

    Each runs in its own session, so a terminal's Ctrl-C reaches only the learner.
    ``close`` sends SIGTERM (an actor's clean stop: it sends ``bye`` and exits), waits,
    then kills whatever is left. Their logs go to ``log_dir/<actor id>.log``.
    """

    def __init__(self, count: int, endpoint: str, log_dir: Path, threads: int = 1) -> None:
        self.count = count
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.threads = threads
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> LocalActors:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for index in range(self.count):
                self.start(f"local-{index}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def start(self, actor_id: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "workers.actor", "--learner", self.endpoint,
                   "--actor-id", actor_id, "--threads", str(self.threads)]
        with open(self.log_dir / f"{actor_id}.log", "ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[actor_id] = process
        logger.info("started local actor %s (pid %d)", actor_id, process.pid)
        return process

    def close(self, grace_seconds: float = 5.0) -> None:
        """Terminate every actor, wait, then kill what is left (idempotent)."""
        for escalate in ("terminate", "kill"):
            alive = [process for process in self.processes.values() if process.poll() is None]
            if not alive:
                break
            for process in alive:
                if escalate == "terminate":
                    process.terminate()
                elif escalate == "kill":
                    process.kill()
            for process in alive:
                try:
                    process.wait(timeout=grace_seconds)
                except subprocess.TimeoutExpired:
                    pass
        for actor_id, process in self.processes.items():
            if process.poll() is None:
                logger.error("local actor %s (pid %d) survived kill", actor_id, process.pid)
