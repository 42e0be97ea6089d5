"""Shared helpers for tests that run real learner and actor processes on 127.0.0.1."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable


def free_port_pair() -> int:
    """A port P such that P (ROUTER) and P + 1 (PUB) are both free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 60_000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
