"""``keisei-pipeline``: the strongest path on one machine, as one resumable command.

Usage::

    keisei-pipeline RUN_DIR [--generate-minutes 20] [--pretrain-minutes 20]
                    [--selfplay-minutes 20] [--phases generate,pretrain,selfplay,evaluate]
                    [--engine usi:fairy-stockfish] [--engine-depth 4] [--workers N]
                    [--beside-workers N]
                    [--opponent SPEC ...] [--games 20] [--visits 256] [--web HOST:PORT]
                    [--set SECTION.KEY=VALUE ...]

Four named phases, in order, each in a folder of ``RUN_DIR``:

1. ``generate`` (``RUN_DIR/records``): ``keisei-generate``, the engine's games against
   itself for ``--generate-minutes``;
2. ``pretrain`` (``RUN_DIR/pretrain``): ``keisei-pretrain`` on them for
   ``--pretrain-minutes`` (the 4×48 network);
3. ``selfplay`` (``RUN_DIR/selfplay``): ``keisei-learner --init-from RUN_DIR/pretrain``
   with the settings for self-play on a pre-trained start (``ON_START``, also
   ``configs/on-start.toml``) for ``--selfplay-minutes`` (``train.minutes``), and the
   engine games of phase 1 trained beside its own (``engine_games_beside``). Meanwhile
   ``--beside-workers`` more ``keisei-generate`` processes (default 1 on a machine of two
   or more cores) make new engine games into ``RUN_DIR/records-beside``, which self-play
   reads before every update and trains beside its own as they come
   (``train.supervised_records``); the learner gets the other cores (``run.threads``);
4. ``evaluate`` (``RUN_DIR/eval/NAME``): ``keisei-eval``, the final network searching
   ``--visits`` a move against each ``--opponent`` (default GNU Shogi depth 3).

``RUN_DIR/pipeline.json`` keeps each phase's state. Run the same command again after an
interrupt (Ctrl-C, SIGTERM, a reboot): finished phases are skipped, and the interrupted one
continues. ``generate`` appends new games for the minutes it has left, ``pretrain`` and
``selfplay`` resume from their newest checkpoint, and ``evaluate`` plays the opponents that
have no result yet. A finished phase is not redone: delete its folder to redo it (and those
after it); evaluation plays any opponent added since. The network to play at the end is ``RUN_DIR/selfplay`` (``keisei-play``,
``keisei-usi``, ``keisei-eval`` take the folder).

``--set SECTION.KEY=VALUE`` goes to the commands that read the section: ``pretrain.*`` to
pre-training; ``model``, ``run``, ``checkpoint`` and ``display`` to both trainers; the rest
to self-play. Exit codes: 0 every phase done; 1 a phase failed; 2 bad arguments or a
missing engine; 130 interrupted (run it again to continue).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from keisei.cli import ExitCode, HelpConfig, add_version
from keisei.config import Config, ConfigError, load_config
from keisei.dataset import GENERATOR_STARTED
from keisei.files import write_json_atomically
from keisei.processes import stop_process_tree
from keisei.rundir import RunDir

PHASES = ("generate", "pretrain", "selfplay", "evaluate")
FOLDERS = {"generate": "records", "pretrain": "pretrain", "selfplay": "selfplay", "evaluate": "eval"}
# Self-play on a pre-trained start: search targets as the improvement signal (a quarter of
# the plies searched with 64 Gumbel visits, weighted 4, the value target mixed a third with
# the search's value), small PPO steps, a KL penalty toward the start and a value anchor
# that keeps the value head what pre-training made it. Measured in
# docs/results/2026-12-04-self-play-on-a-start.md and
# docs/results/2026-12-04-self-play-under-search.md; configs/on-start.toml holds the same.
ON_START = ("model.blocks=4", "model.channels=48", "selfplay.games=64", "selfplay.max_plies=256",
            "selfplay.search_share=0.25", "selfplay.search_visits=64",
            "train.steps_per_epoch=2048", "train.ppo_passes=2", "train.minibatch_size=128",
            "train.learning_rate=0.0001", "train.lr_schedule=constant",
            "train.max_policy_lag=64", "train.search_coef=4.0", "train.search_value_mix=0.33",
            "train.init_kl_coef=0.5", "train.value_anchor_coef=1.0", "checkpoint.every_epochs=5")
# Where the start's engine games are at hand (keisei-pretrain's data folder), self-play
# trains on them beside its own games in place of the value anchor: 0.542 over 700 games
# against the start under search on the slower machines, 0.644 over 400 on a faster one
# (docs/results/2026-12-06-engine-games-by-default.md).
BESIDE = ("train.value_anchor_coef=0",)
# Engine games made during self-play, on a core of their own, trained as they come: from
# the same start and seed, 0.630 under search (100 games) against self-play on both cores
# without them; at equal wall-clock against the same games pre-trained, 0.506 over two
# runs (600 games) (docs/results/2026-12-07-engine-games-made-beside-self-play.md,
# docs/results/2026-12-07-engine-games-beside-self-play-a-second-run.md).
RECORDS_BESIDE = "records-beside"
BESIDE_SEED = 1000  # the beside games' seeds, apart from the generate phase's 0, 1, 2, ...
UNTIL_STOPPED = 525_600  # keisei-generate --minutes for a generator stopped with its learner


def engine_games_beside(start: str | Path) -> list[str]:
    """The settings that train a pre-trained start's own engine games beside self-play
    (``BESIDE`` and ``train.supervised_data``): ``start`` is a ``keisei-pretrain`` run
    folder or one of its checkpoints. Nothing where it has no data folder (a network from
    elsewhere keeps ``ON_START``'s value anchor)."""
    path = Path(start)
    run = path if path.is_dir() else path.parent.parent
    data = run / "data"
    if not (data / "dataset.json").is_file():
        return []
    return [f"train.supervised_data={data}", *BESIDE]


def beside_command(engine: str, depth: int, workers: int, minutes: float | None, seed: int,
                   output: Path) -> list[str]:
    """``keisei-generate`` making engine games into ``output`` beside self-play, for
    ``minutes`` (None: until it is stopped)."""
    limit = ["--depth", str(depth)] if engine.startswith("usi:") else []
    budget = f"{max(minutes, 0.1):.3f}" if minutes is not None else str(UNTIL_STOPPED)
    return [*command("generate"), "--engine", engine, *limit, "--minutes", budget,
            "--workers", str(workers), "--seed", str(seed), "--output", str(output),
            "--progress", "60"]


def next_beside_seed(output: Path) -> int:
    """The seed for another start of the generator into ``output``: ``BESIDE_SEED`` plus
    the starts so far, counted in ``output/beside.json``, so that games appended by a
    restarted run are new games."""
    path = output / "beside.json"
    try:
        starts = int(json.loads(path.read_text(encoding="utf-8"))["starts"])
    except (OSError, ValueError, KeyError, TypeError):
        starts = 0
    write_json_atomically(path, {"starts": starts + 1})
    return BESIDE_SEED + starts + 1


@contextmanager
def generator_beside(command: list[str], output: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (``beside_command``'s) for as long as the block runs, its output
    appended to ``output/generate.log``; when the block ends, stop it as Ctrl-C would (its
    whole process tree after 30 s), once it has started (up to ``START_SECONDS``), so that
    even a block of a second stops it cleanly."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "generate.log", "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=default_sigint)
    try:
        yield process
    finally:
        wait_for_start(process, output / "generate.log", offset)
        stop(process, patience=30.0)


START_SECONDS = 60.0  # the longest a generator is given to start before it is stopped


def wait_for_start(process: subprocess.Popen[bytes], log: Path, offset: int) -> None:
    """Wait until the generator writing ``log`` from ``offset`` on has printed
    ``GENERATOR_STARTED`` (from then on a stop is clean), has exited, or ``START_SECONDS``
    have passed."""
    deadline = time.monotonic() + START_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with open(log, "rb") as file:
                file.seek(offset)
                if GENERATOR_STARTED.encode() in file.read():
                    return
        except OSError:
            return
        time.sleep(0.05)


def cores_left(workers: int) -> int:
    """The torch threads for a learner beside ``workers`` generator processes: the cores
    they leave, at least one."""
    return max(1, (os.cpu_count() or 1) - workers)


def records_beside(output: Path, workers: int) -> list[str]:
    """The learner's settings for games made into ``output`` by ``workers`` processes
    beside it: read as they come, on the cores they leave."""
    return [f"train.supervised_records={output}", f"run.threads={cores_left(workers)}"]


# the sections keisei-pretrain reads; model, run, checkpoint and display go to both trainers
PRETRAIN_SECTIONS = {"run", "model", "pretrain", "checkpoint", "display"}
SHARED_SECTIONS = {"run", "model", "checkpoint", "display"}
SAVE_SECONDS = 30.0  # how often a running phase's time is written to pipeline.json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-pipeline", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Engine games, pre-training, self-play and evaluation in one run folder; "
        "run it again to continue after an interrupt.",
        epilog="examples:\n"
               "  keisei-pipeline runs/pipeline                      # about an hour, then 20 games vs GNU Shogi d3\n"
               "  keisei-pipeline runs/pipeline --web 127.0.0.1:8080  # watch the self-play phase\n"
               "  keisei-pipeline runs/short --generate-minutes 5 --pretrain-minutes 5 \\\n"
               "      --selfplay-minutes 5 --opponent greedy --opponent gnushogi:1\n"
               "  keisei-play runs/pipeline/selfplay                 # then play the result")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the pipeline's folder")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"the phases to run, in order (default {','.join(PHASES)})")
    parser.add_argument("--generate-minutes", type=float, default=20.0, metavar="M",
                        help="engine games (default 20)")
    parser.add_argument("--pretrain-minutes", type=float, default=20.0, metavar="M",
                        help="pre-training (default 20)")
    parser.add_argument("--selfplay-minutes", type=float, default=20.0, metavar="M",
                        help="self-play from the pre-trained network (default 20)")
    parser.add_argument("--engine", default="usi:fairy-stockfish", metavar="SPEC",
                        help="the engine whose games are imitated (keisei-generate --engine)")
    parser.add_argument("--engine-depth", type=int, default=4, metavar="N",
                        help="its search depth for usi: engines (default 4)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="processes for engine games and evaluation (default: the cores)")
    parser.add_argument("--beside-workers", type=int, metavar="N",
                        default=1 if (os.cpu_count() or 1) >= 2 else 0,
                        help="engine-game processes beside self-play, whose games it trains as "
                             f"they come (RUN_DIR/{RECORDS_BESIDE}); the learner gets the other "
                             "cores (default 1 on two or more cores; 0: none)")
    parser.add_argument("--opponent", action="append", metavar="SPEC",
                        help="an evaluation opponent, repeatable (keisei-eval --opponent; "
                             "default gnushogi:3)")
    parser.add_argument("--games", type=int, default=20, help="evaluation games per opponent")
    parser.add_argument("--visits", type=int, default=256,
                        help="search visits a move when evaluating (0: the raw policy)")
    parser.add_argument("--web", metavar="HOST:PORT",
                        help="the self-play learner's web view (keisei-learner --web)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="a setting for the trainers (repeatable)")
    parser.add_argument("--help-config", action=HelpConfig, sections=Config.section_names(),
                        help="list the settings --set can give the trainers, and exit")
    return add_version(parser)


@dataclass
class Plan:
    """What the command line asks for, checked."""

    run_dir: Path
    phases: list[str]
    minutes: dict[str, float]
    engine: str
    engine_depth: int
    workers: int
    opponents: list[str]
    games: int
    visits: int
    web: str | None
    beside_workers: int = 0
    pretrain_sets: list[str] = field(default_factory=list)
    selfplay_sets: list[str] = field(default_factory=list)


def make_plan(args: argparse.Namespace) -> tuple[Plan | None, list[str]]:
    """The plan, or the problems with the arguments (each naming its flag)."""
    problems = []
    phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = [name for name in phases if name not in PHASES]
    if unknown or not phases:
        problems.append(f"--phases: {','.join(unknown) or 'none given'}; the phases are "
                        f"{','.join(PHASES)}")
    phases = [name for name in PHASES if name in phases]  # always in their order
    for flag in ("generate_minutes", "pretrain_minutes", "selfplay_minutes"):
        if not getattr(args, flag) > 0:
            problems.append(f"--{flag.replace('_', '-')} must be more than 0")
    for flag, low in (("engine_depth", 1), ("workers", 1), ("games", 1), ("visits", 0),
                      ("beside_workers", 0)):
        if getattr(args, flag) < low:
            problems.append(f"--{flag.replace('_', '-')} must be at least {low}")
    pretrain_sets, selfplay_sets = [], []
    for item in args.overrides:
        match = re.fullmatch(r"([a-z_]+)\.([a-z_0-9]+)=(.*)", item)
        if match is None:
            problems.append(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. model.blocks=6")
            continue
        section, key = match.group(1), match.group(2)
        if (section, key) in {("run", "dir"), ("train", "minutes"), ("pretrain", "minutes")}:
            problems.append(f"--set {section}.{key}: the pipeline sets it (RUN_DIR and the "
                            "--*-minutes flags)")
            continue
        if section in PRETRAIN_SECTIONS:
            pretrain_sets.append(item)
        if section not in PRETRAIN_SECTIONS or section in SHARED_SECTIONS:
            selfplay_sets.append(item)
    if not problems:  # a mistyped setting is named now, not when its phase starts
        for overrides in (pretrain_sets, [*ON_START, *selfplay_sets]):
            try:
                load_config(None, overrides)
            except ConfigError as exc:
                problems += [f"--set: {problem}" for problem in exc.problems
                             if f"--set: {problem}" not in problems]
    if problems:
        return None, problems
    return Plan(Path(args.run_dir), phases,
                {"generate": args.generate_minutes, "pretrain": args.pretrain_minutes,
                 "selfplay": args.selfplay_minutes}, args.engine, args.engine_depth,
                args.workers, args.opponent or ["gnushogi:3"], args.games, args.visits, args.web,
                args.beside_workers, pretrain_sets, selfplay_sets), []


def has_output(plan: Plan, name: str) -> bool:
    """Whether a phase's folder still holds what it made (a user may delete it to redo it);
    evaluation is always looked at again, opponent by opponent."""
    if name == "generate":
        return any((plan.run_dir / "records").glob("games-*.csa"))
    if name in ("pretrain", "selfplay"):
        return RunDir(plan.run_dir / name).newest_checkpoint() is not None
    return False


def forget_deleted(plan: Plan, state: State) -> None:
    """A phase marked done whose output is gone runs again from the start."""
    for name in PHASES:
        if state.done(name) and not has_output(plan, name):
            if name != "evaluate":
                print(f"keisei-pipeline: {name}: its folder is gone; it runs again", flush=True)
            state.data["phases"].pop(name)


def missing_programs(plan: Plan, state: State) -> list[str]:
    """The engines the phases still to run need but this machine lacks."""
    specs = []
    if ("generate" in plan.phases and not state.done("generate")) or (
            "selfplay" in plan.phases and not state.done("selfplay") and plan.beside_workers):
        specs.append(plan.engine)
    if "evaluate" in plan.phases:
        specs += plan.opponents
    missing = []
    for spec in specs:
        program = missing_program(spec)
        if program is not None and program not in missing:
            missing.append(program)
    return missing


def missing_program(spec: str) -> str | None:
    """The program an engine ``spec`` runs where this machine lacks it (neither on PATH
    nor in /usr/games), else None."""
    program = (spec[4:].split()[0] if spec.startswith("usi:") and spec[4:].strip()
               else "gnushogi" if spec.startswith("gnushogi:") else None)
    if program is None or shutil.which(program) or shutil.which(program, path="/usr/games"):
        return None
    return program


class State:
    """``RUN_DIR/pipeline.json``: each phase's seconds so far and whether it is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"phases": {}}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
                if not isinstance(self.data.get("phases"), dict):
                    raise ValueError("no 'phases' object")
            except ValueError as exc:
                raise ValueError(f"{path} is not a pipeline state file ({exc}); move it away "
                                 "or use another RUN_DIR") from exc

    def phase(self, name: str) -> dict[str, Any]:
        phases: dict[str, dict[str, Any]] = self.data["phases"]
        return phases.setdefault(name, {"done": False, "seconds": 0.0, "attempts": 0})

    def done(self, name: str) -> bool:
        return bool(self.data["phases"].get(name, {}).get("done"))

    def save(self) -> None:
        write_json_atomically(self.path, self.data)


class Interrupted(Exception):
    """A stop was asked for while a phase ran."""


@dataclass
class Companion:
    """A command that runs beside a phase's command for as long as it does, its output
    going to ``log`` (the phase's own output keeps the terminal)."""

    command: list[str]
    log: Path


def stop(process: subprocess.Popen[bytes], patience: float = 120.0) -> None:
    """Ask a child to stop as Ctrl-C would; if it has not after ``patience``, stop it and
    everything it started (``keisei.processes.stop_process_tree``)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            stop_process_tree(process)


def default_sigint() -> None:
    """In a child before it runs: SIGINT as a Python program expects it, even where the
    pipeline was started with it ignored (a shell's background job, ``nohup``), so that
    the SIGINT the pipeline passes on stops it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Runner:
    """Runs one phase's commands as children in a session of their own, so that a signal
    to the pipeline reaches each child exactly once: Ctrl-C or SIGTERM is passed on as
    SIGINT (every Keisei command stops cleanly on it; a second one aborts)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.child: subprocess.Popen[bytes] | None = None
        self.companion: subprocess.Popen[bytes] | None = None
        self.stops = 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stops += 1
        print(f"keisei-pipeline: {signal.Signals(signum).name}: stopping the phase; run the "
              "same command again to continue", file=sys.stderr, flush=True)
        for child in (self.child, self.companion):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGINT)

    def run(self, name: str, command: list[str], companion: Companion | None = None) -> int:
        """Run ``command`` as part of phase ``name``, adding its wall-clock to the phase's
        seconds as it goes; its exit code. A ``companion`` starts with it and is stopped
        when it ends (its own exit code only reported)."""
        if self.stops:
            raise Interrupted
        record = self.state.phase(name)
        print("$ " + " ".join(command), flush=True)
        started = last = time.monotonic()
        if companion is not None:
            print(f"$ {' '.join(companion.command)} > {companion.log} (beside it)", flush=True)
            with open(companion.log, "ab") as log:
                offset = log.tell()
                self.companion = subprocess.Popen(companion.command, stdout=log,
                                                  stderr=subprocess.STDOUT,
                                                  start_new_session=True,
                                                  preexec_fn=default_sigint)
        try:
            self.child = subprocess.Popen(command, start_new_session=True,
                                          preexec_fn=default_sigint)
            while True:
                try:
                    code = self.child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - last >= SAVE_SECONDS:
                    record["seconds"] += now - last
                    last = now
                    self.state.save()
        finally:
            if self.child is not None:  # the pipeline itself failed: do not leave it behind
                stop(self.child)
            if self.companion is not None and companion is not None:
                wait_for_start(self.companion, companion.log, offset)
                stop(self.companion, patience=30.0)
                print(f"keisei-pipeline: {name}: {companion.command[2]} "
                      f"beside it exited {self.companion.returncode}", flush=True)
            record["seconds"] += time.monotonic() - last
            self.state.save()
            self.child = self.companion = None
        print(f"keisei-pipeline: {name}: {command[2] if command[1:2] == ['-m'] else command[0]} "
              f"exited {code} after {time.monotonic() - started:.0f} s", flush=True)
        if self.stops:
            raise Interrupted
        return code


def command(name: str) -> list[str]:
    """A Keisei command of this installation, run with this interpreter."""
    modules = {"generate": "workers.generate", "pretrain": "pretrain.main",
               "learner": "learner.main", "eval": "workers.evaluate"}
    return [sys.executable, "-m", modules[name]]


def sets(items: Sequence[str]) -> list[str]:
    return [word for item in items for word in ("--set", item)]


def generate(plan: Plan, runner: Runner) -> int:
    record = runner.state.phase("generate")
    left = plan.minutes["generate"] - record["seconds"] / 60
    if left * 60 < 1.0:  # an interrupt came in the last second of the budget
        return ExitCode.SUCCESS
    engine = ["--engine", plan.engine] + (["--depth", str(plan.engine_depth)]
                                          if plan.engine.startswith("usi:") else [])
    record["attempts"] += 1  # another seed each time: appended games are new games
    return runner.run("generate", [*command("generate"), *engine, "--minutes", f"{left:.3f}",
                                   "--workers", str(plan.workers), "--seed",
                                   str(record["attempts"] - 1), "--output",
                                   str(plan.run_dir / "records"), "--progress", "60"])


def pretrain(plan: Plan, runner: Runner) -> int:
    folder = plan.run_dir / "pretrain"
    settings = ["model.blocks=4", "model.channels=48", f"run.dir={folder}",
                f"pretrain.minutes={plan.minutes['pretrain']}", "pretrain.epochs=100",
                "pretrain.validate_every=100000", *plan.pretrain_sets]
    start = ["--resume"] if RunDir(folder).newest_checkpoint() is not None else [
        str(plan.run_dir / "records")]
    return runner.run("pretrain", [*command("pretrain"), *start, *sets(settings)])


def selfplay(plan: Plan, runner: Runner) -> int:
    folder = plan.run_dir / "selfplay"
    settings = [*ON_START, *engine_games_beside(plan.run_dir / "pretrain"),
                "train.total_steps=1000000000", f"run.dir={folder}",
                f"train.minutes={plan.minutes['selfplay']}"]
    companion = None
    if plan.beside_workers:
        records = plan.run_dir / RECORDS_BESIDE
        records.mkdir(parents=True, exist_ok=True)
        # another seed each time (kept apart from a deleted phase's): appended games are new
        attempt = runner.state.data.get("beside_attempts", 0) + 1
        runner.state.data["beside_attempts"] = attempt
        left = plan.minutes["selfplay"] - runner.state.phase("selfplay")["seconds"] / 60
        companion = Companion(beside_command(plan.engine, plan.engine_depth,
                                             plan.beside_workers, left,
                                             BESIDE_SEED + attempt, records),
                              records / "generate.log")
        settings += records_beside(records, plan.beside_workers)
    start = (["--resume"] if RunDir(folder).newest_checkpoint() is not None else
             ["--init-from", str(plan.run_dir / "pretrain")])
    web = ["--web", plan.web] if plan.web else []
    return runner.run("selfplay", [*command("learner"), *start, *web,
                                   *sets([*settings, *plan.selfplay_sets])], companion)


def evaluate(plan: Plan, runner: Runner) -> int:
    budget = ["--visits", str(plan.visits)] if plan.visits else []
    for opponent in plan.opponents:
        folder = plan.run_dir / "eval" / re.sub(r"[^A-Za-z0-9@.+-]+", "-", opponent).strip("-")
        if (folder / "results.json").is_file():
            print(f"keisei-pipeline: evaluate: {opponent}: played before ({folder})", flush=True)
            continue
        code = runner.run("evaluate", [*command("eval"), "--checkpoint",
                                       str(plan.run_dir / "selfplay"), "--name", "keisei",
                                       *budget, "--opponent", opponent, "--games",
                                       str(plan.games), "--workers", str(plan.workers),
                                       "--output", str(folder)])
        if code != ExitCode.SUCCESS:
            return code
    return ExitCode.SUCCESS


STEPS = {"generate": generate, "pretrain": pretrain, "selfplay": selfplay, "evaluate": evaluate}


def summary(plan: Plan, state: State) -> list[str]:
    """One line a phase: done or not, and its wall-clock; then the evaluation's scores."""
    lines = []
    for name in PHASES:
        record = state.data["phases"].get(name)
        if record is not None:
            lines.append(f"  {name:<9} {'done' if record['done'] else 'not done':<9} "
                         f"{record['seconds'] / 60:6.1f} min")
    for results in sorted((plan.run_dir / "eval").glob("*/results.json")):
        for pairing in json.loads(results.read_text()).get("pairings", []):
            games = pairing["wins"] + pairing["draws"] + pairing["losses"]
            score = (pairing["wins"] + pairing["draws"] / 2) / max(games, 1)
            lines.append(f"  {pairing['first']} vs {pairing['second']}: {score:.3f} "
                         f"(+{pairing['wins']} ={pairing['draws']} -{pairing['losses']}, "
                         f"{games} games)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan, problems = make_plan(args)
    if plan is None:
        print("keisei-pipeline: " + "; ".join(problems), file=sys.stderr)
        return ExitCode.USAGE
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        state = State(plan.run_dir / "pipeline.json")
    except (OSError, ValueError) as exc:
        print(f"keisei-pipeline: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    forget_deleted(plan, state)
    missing = missing_programs(plan, state)
    if missing:
        print(f"keisei-pipeline: {', '.join(missing)} is not installed (on Debian or Ubuntu: "
              "apt-get install fairy-stockfish gnushogi); or choose others with --engine and "
              "--opponent", file=sys.stderr)
        return ExitCode.USAGE
    runner = Runner(state)
    previous = {signum: signal.signal(signum, runner.on_signal)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for name in plan.phases:
            if state.done(name):
                print(f"keisei-pipeline: {name}: done before; skipped (delete "
                      f"{plan.run_dir / FOLDERS[name]} to redo it)", flush=True)
                continue
            state.data["current"] = name
            state.save()
            code = STEPS[name](plan, runner)
            if code != ExitCode.SUCCESS:
                print(f"keisei-pipeline: {name} failed (exit {code}); the log above says why. "
                      "Run the same command again to continue from there.", file=sys.stderr)
                return ExitCode.FAILURE
            state.phase(name)["done"] = True
            state.save()
    except Interrupted:
        print(f"keisei-pipeline: interrupted in {state.data.get('current')}; run the same "
              "command again to continue", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print("\n".join([f"{plan.run_dir}:", *summary(plan, state)]), flush=True)
    state.data.pop("current", None)
    state.save()
    trained = [name for name in ("selfplay", "pretrain") if state.done(name)]
    print("keisei-pipeline: done." + (f" Play the network: keisei-play {plan.run_dir / trained[0]}"
                                     if trained else ""), flush=True)
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
