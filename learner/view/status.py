"""``keisei-learner --status``: the run's mode, counters, actors and recent mode changes,
read from the ``status.json`` the supervisor rewrites each second (plain JSON: reading
it needs neither torch nor the learner)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from keisei.rundir import RunDir

STATUS_STALE_SECONDS = 15.0
"""A status older than this means the learner is not running or not responding."""


def print_status(run_dir: Path) -> int:
    """Print the status of the run in ``run_dir``. The exit code is a Docker health
    check's: 0 (healthy) when it is fresh, 1 (unhealthy) when it is older than
    ``STATUS_STALE_SECONDS`` or there is none to read; Docker reserves 2."""
    path = RunDir(run_dir).status
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"keisei-learner: no readable status in {path} ({exc}); it is written while a run "
              "with actors is going", file=sys.stderr)
        return 1
    age = time.time() - status["time"]
    print(f"{run_dir}: mode {status['mode']}, step {status['step']}, epoch {status['epoch']}, "
          f"policy v{status['policy_version']}, learner pid {status['pid']} (updated {age:.0f} s ago)")
    print(f"{'actor':<16} {'state':<9} {'steps/s':>8} {'policy':>7} {'games':>7} {'restarts':>8} heard")
    for actor in status["actors"]:
        print(f"{actor['actor_id']:<16} {actor['state']:<9} {actor['steps_per_second']:>8.0f} "
              f"{'v' + str(actor['policy_version']):>7} {actor['games_received']:>7} "
              f"{actor['restarts']:>8} {actor['seconds_since_heard']} s ago")
    for transition in status["transitions"]:
        when = time.strftime("%H:%M:%S", time.localtime(transition["time"]))
        print(f"{when} -> {transition['mode']}: {transition['cause']}")
    if age > STATUS_STALE_SECONDS:
        print(f"status is {age:.0f} s old: the learner is not running or not responding", file=sys.stderr)
        return 1
    return 0
