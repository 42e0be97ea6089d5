"""Are all the cores busy? The demo's training with in-process collection against local
actors, side by side in one run.

Each arm runs ``keisei-learner`` with ``--config`` (default: the demo's
``configs/quick.toml``) for ``--seconds`` of wall-clock, then stops it with SIGINT as a
user would. Ratings games are off (``evaluation.every_epochs=0``) so that only training
competes for the cores. Arms, as ``--arms`` names them:

* ``in-process``: no actors, the learner collects between updates with every core
  (``run.threads=0``): in-process collection at its best;
* ``actors``: ``--actors`` local actors, with the configuration's own ``run.threads``;
* ``actors-1-thread``: the same with ``run.threads=1`` (the demo's setting before the
  learner's threads followed its actors);
* ``actors-2-thread``: the same with ``run.threads=2``: the learner keeps two threads
  whatever its actors do (only the actors' niceness shares the cores);
* ``in-process-passive``, ``actors-passive``, ``actors-2-thread-passive``: those arms with
  ``OMP_WAIT_POLICY=PASSIVE``: torch's OpenMP threads sleep as soon as they run out of
  work instead of spinning first, so the niced actors can have those moments.

For each arm it prints the training rate (steps per second from the second epoch's
report to the last, so start-up is not counted), the mean collect and update seconds of
an epoch, the mean policy lag, and the cores busy (from ``psutil``'s whole-machine CPU
use, sampled every ``--sample`` seconds): over the timed epochs and over their updates
alone. Then the ratio of each arm's rate to the first arm's. ``--repeat N`` runs the
arms N times, interleaved, and prints every run and the mean ratio.

It also checks the actors' reported delivery rate: the mean of ``metrics.jsonl``'s
``actor_steps_per_second`` against the steps the wire ledger says arrived per second.

Usage: python -m bench.cores [--seconds 150] [--config configs/quick.toml] [--actors 2]
[--arms in-process,actors] [--repeat 1] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
"""OpenMP threads that sleep at once when they run out of work, instead of spinning for a
while first (libgomp's default): the cores they leave go to whatever else can run."""

ARMS: dict[str, tuple[bool, list[str], dict[str, str]]] = {  # name: (local actors?, settings, env)
    "in-process": (False, ["run.threads=0"], {}),
    "actors": (True, [], {}),
    "actors-1-thread": (True, ["run.threads=1"], {}),
    "actors-2-thread": (True, ["run.threads=2"], {}),
    "in-process-passive": (False, ["run.threads=0"], PASSIVE),
    "actors-passive": (True, [], PASSIVE),
    "actors-2-thread-passive": (True, ["run.threads=2"], PASSIVE),
}


@dataclass
class ArmResult:
    name: str
    steps_per_second: float
    epochs: int
    collect_seconds: float
    update_seconds: float
    policy_lag: float
    cores_busy: float
    cores_busy_update: float
    reported_actor_rate: float | None  # mean actor_steps_per_second of the timed epochs
    delivered_actor_rate: float | None  # wire steps received per second over them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="wall-clock per arm")
    parser.add_argument("--config", default="configs/quick.toml")
    parser.add_argument("--actors", type=int, default=2, help="local actors in the actor arms")
    parser.add_argument("--arms", default="in-process,actors",
                        help=f"comma-separated, from {', '.join(ARMS)}; ratios are to the first")
    parser.add_argument("--repeat", type=int, default=1, help="run the arms this many times, interleaved")
    parser.add_argument("--sample", type=float, default=0.25, help="seconds between CPU samples")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="section.key=value", help="a setting for every arm")
    return parser


class CpuSampler(threading.Thread):
    """Whole-machine CPU use, in cores busy, every ``interval`` seconds, with wall times."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (time.time() at the end, cores busy)
        self.done = threading.Event()

    def run(self) -> None:
        cores = psutil.cpu_count() or 1
        psutil.cpu_percent(None)
        while not self.done.wait(self.interval):
            self.samples.append((time.time(), psutil.cpu_percent(None) / 100 * cores))

    def mean(self, spans: list[tuple[float, float]]) -> float:
        inside = [busy for at, busy in self.samples
                  if any(start <= at - self.interval / 2 <= end for start, end in spans)]
        return statistics.fmean(inside) if inside else float("nan")


def run_arm(name: str, args: argparse.Namespace) -> ArmResult:
    actors, settings, env = ARMS[name]
    with tempfile.TemporaryDirectory(prefix=f"keisei-cores-{name}-") as run_dir:
        command = [sys.executable, "-m", "learner.main", "--config", args.config,
                   "--set", f"run.dir={run_dir}", "--set", "display.mode=plain",
                   "--set", "evaluation.every_epochs=0", "--set", "train.total_steps=1000000000",
                   "--set", "checkpoint.every_epochs=100000"]
        for setting in [*args.overrides, *settings]:
            command += ["--set", setting]
        if actors:
            command += ["--local-actors", str(args.actors)]
        sampler = CpuSampler(args.sample)
        log = Path(run_dir) / "learner.log"
        with log.open("w") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       env={**os.environ, **env})
            sampler.start()
            try:
                time.sleep(args.seconds)
            finally:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    for child in psutil.Process(process.pid).children(recursive=True):
                        child.kill()
                    process.kill()
                    process.wait()
                sampler.done.set()
                sampler.join()
        lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        if len(lines) < 3:
            sys.exit(f"{name}: only {len(lines)} epochs in {args.seconds:.0f} s; the learner said:\n"
                     + log.read_text()[-3000:])
    timed = lines[1:]
    first, last = timed[0], timed[-1]
    rate = (last["step"] - first["step"]) / (last["time"] - first["time"])
    epochs = timed[1:]  # the epochs that ended inside the timed span
    spans = [(first["time"], last["time"])]
    updates = [(line["time"] - line["update_seconds"], line["time"]) for line in epochs]
    reported = delivered = None
    if actors:
        reported = statistics.fmean(line.get("actor_steps_per_second", 0.0) for line in epochs)
        delivered = ((last["wire_steps_received"] - first["wire_steps_received"])
                     / (last["time"] - first["time"]))
    return ArmResult(name, rate, len(epochs),
                     statistics.fmean(line["collect_seconds"] for line in epochs),
                     statistics.fmean(line["update_seconds"] for line in epochs),
                     statistics.fmean(line["policy_lag_mean"] for line in epochs),
                     sampler.mean(spans), sampler.mean(updates), reported, delivered)


def report(result: ArmResult, baseline: ArmResult) -> str:
    actors = ""
    if result.reported_actor_rate is not None and result.delivered_actor_rate is not None:
        actors = (f"  actors' rate reported {result.reported_actor_rate:6.1f} / delivered "
                  f"{result.delivered_actor_rate:6.1f} steps/s")
    return (f"{result.name:<16} {result.steps_per_second:7.1f} steps/s "
            f"({result.steps_per_second / baseline.steps_per_second:5.2f}x)  {result.epochs:3d} epochs  "
            f"collect {result.collect_seconds:4.1f}s update {result.update_seconds:4.1f}s  "
            f"lag {result.policy_lag:4.1f}  cores busy {result.cores_busy:4.2f} "
            f"(update {result.cores_busy_update:4.2f})" + actors)


def main() -> None:
    args = build_parser().parse_args()
    names = [name.strip() for name in args.arms.split(",") if name.strip()]
    unknown = [name for name in names if name not in ARMS]
    if unknown or not names:
        sys.exit(f"--arms: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ARMS)}")
    print(f"{args.config}, {args.seconds:.0f} s an arm, {os.cpu_count()} cores, "
          f"{args.actors} local actors in the actor arms", flush=True)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeat):
        results = [run_arm(name, args) for name in names]
        print(f"round {round_ + 1}:")
        for result in results:
            print("  " + report(result, results[0]), flush=True)
            ratios[result.name].append(result.steps_per_second / results[0].steps_per_second)
    if args.repeat > 1:
        print("mean ratio to " + names[0] + ": " + ", ".join(
            f"{name} {statistics.fmean(values):.3f}" for name, values in ratios.items()))


if __name__ == "__main__":
    main()
