"""``keisei-learner --status``: the run's mode, counters, actors and recent mode changes,
read from the ``status.json`` the supervisor rewrites each second (plain JSON: reading
it needs neither torch nor the learner)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from keisei.rundir import RunDir

STATUS_STALE_SECONDS = 15.0
"""A status older than this means the learner is not running or not responding."""

ENDINGS = {"finished": "finished", "interrupted": "was interrupted", "failed": "failed",
           "rank-lost": "ended when a rank was lost"}
"""How ``status.json``'s final ``state`` reads (``learner.app.RunOutcome``)."""


def print_status(run_dir: Path) -> int:
    """Print the status of the run in ``run_dir``. For a learner that runs, the exit
    code is a Docker health check's: 0 (healthy) when the status is fresh, 1 (unhealthy)
    when it is older than ``STATUS_STALE_SECONDS`` or there is none to read; Docker
    reserves 2. For a run that ended (its final status, written at exit): 0 when it
    finished, 1 when it was interrupted or failed."""
    path = RunDir(run_dir).status
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"keisei-learner: no readable status in {path} ({exc}); it is written while a run "
              "with actors is going", file=sys.stderr)
        return 1
    age = time.time() - status["time"]
    state = status.get("state", "running")
    if state == "running":
        print(f"{run_dir}: mode {status['mode']}, step {status['step']}, epoch {status['epoch']}, "
              f"policy v{status['policy_version']}, learner pid {status['pid']} (updated {age:.0f} s ago)")
    else:
        ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["ended"]))
        print(f"{run_dir}: {ENDINGS.get(state, state)} at step {status['step']:,} of "
              f"{status['total_steps']:,} (epoch {status['epoch']}, policy "
              f"v{status['policy_version']}), ended {ended} ({_ago(time.time() - status['ended'])})"
              + _time_budget(status))
    print(f"{'actor':<16} {'state':<9} {'steps/s':>8} {'policy':>7} {'games':>7} {'restarts':>8} heard")
    for actor in status["actors"]:
        print(f"{actor['actor_id']:<16} {actor['state']:<9} {actor['steps_per_second']:>8.0f} "
              f"{'v' + str(actor['policy_version']):>7} {actor['games_received']:>7} "
              f"{actor['restarts']:>8} {actor['seconds_since_heard']} s ago")
    for transition in status["transitions"]:
        when = time.strftime("%H:%M:%S", time.localtime(transition["time"]))
        print(f"{when} -> {transition['mode']}: {transition['cause']}")
    if state != "running":
        if state != "finished":
            print(f"the run {ENDINGS.get(state, state)}: keisei-learner --resume continues it "
                  "from its last checkpoint", file=sys.stderr)
        return 0 if state == "finished" else 1
    if age > STATUS_STALE_SECONDS:
        print(f"status is {age:.0f} s old: the learner is not running or not responding", file=sys.stderr)
        return 1
    return 0


def _time_budget(status: dict[str, Any]) -> str:
    """For a run that finished on ``train.minutes`` before ``train.total_steps``, say so."""
    minutes, seconds = status.get("minutes") or 0.0, status.get("train_seconds")
    if status.get("state") != "finished" or not minutes or seconds is None \
            or status["step"] >= status["total_steps"]:
        return ""
    return f"; its train.minutes = {minutes:g} reached after {seconds / 60:.1f} min of training"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
