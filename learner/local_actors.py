"""Local actor processes the learner starts on its own machine, and always reaps."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import psutil

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
            for child in self._orphans(process.pid):
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass

    @staticmethod
    def _orphans(pid: int) -> list[psutil.Process]:
        """Processes an actor started that outlived it (still in its session)."""
        found = []
        for candidate in psutil.process_iter(["pid"]):
            try:
                if os.getsid(candidate.pid) == pid and candidate.pid != pid:
                    found.append(candidate)
            except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                continue
        return found


def stop_process_tree(process: subprocess.Popen[bytes], grace_seconds: float = 3.0) -> None:
    """Stop ``process`` and every process it started: terminate, wait, then kill."""
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_seconds)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
