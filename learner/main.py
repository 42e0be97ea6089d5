"""``keisei-learner``: train a Shogi policy by self-play PPO.

Usage: ``keisei-learner [--config FILE.toml] [--set section.key=value ...] [--resume [MODE]]
[--init-from CHECKPOINT] [--print-config]``. Exit codes: 0 finished; 1 failed while training (an error, a full
disk; the last good checkpoint stays); 2 bad configuration or arguments, or a run that
cannot start (run directory in use, no checkpoint that loads, address in use); 130
stopped by SIGINT/SIGTERM (after writing a checkpoint).

This module only reads the command line and maps what happened to an exit code; the
run itself is ``learner.app.Learner``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from keisei.cli import ExitCode, HelpConfig, add_version, setup_logging, stop_on_signals
from keisei.config import (
    Config,
    ConfigError,
    build_config,
    check_sections,
    load_config,
    load_saved_config,
)
from keisei.protocol import DEFAULT_BIND, ProtocolError
from keisei.rundir import RunDir
from learner.launch import EXIT_RANK_LOST, RankInfo, launch
from learner.view.status import STATUS_STALE_SECONDS, print_status

# learner.app (and with it torch) is imported only to train: `--status`, the health check
# of a running learner, answers from status.json without it.

logger = logging.getLogger(__name__)


RESUME_MODES = ("never", "auto", "always")
SECTIONS = tuple(name for name in Config.section_names() if name != "pretrain")
"""The configuration sections keisei-learner reads (``--set pretrain.*`` is refused)."""


EXIT_CODES = {"finished": ExitCode.SUCCESS, "failed": ExitCode.FAILURE,
              "interrupted": ExitCode.INTERRUPTED, "rank-lost": EXIT_RANK_LOST}
"""``learner.app.RunOutcome`` values → exit codes."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-learner", description="Train a Shogi policy by self-play PPO.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  keisei-learner --config configs/quick.toml --set run.dir=runs/mine --local-actors 2\n"
               "  keisei-learner --set run.dir=runs/mine --resume --set train.total_steps=200000\n"
               "  keisei-learner --init-from runs/pre --set run.dir=runs/ppo --set train.init_kl_coef=0.5\n"
               "  keisei-learner --status runs/mine\n\n"
               f"settings it reads: [{'], ['.join(SECTIONS)}] (keisei-learner --help-config "
               "lists them with types, defaults and ranges; docs/configuration.md too)")
    parser.add_argument("--help-config", action=HelpConfig, sections=SECTIONS,
                        help="list every setting keisei-learner reads, and exit")
    parser.add_argument("--config", metavar="FILE.toml", default=os.environ.get("KEISEI_CONFIG"),
                        help="TOML configuration file (default: $KEISEI_CONFIG)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one key (repeatable)")
    parser.add_argument("--resume", nargs="?", const="always", choices=RESUME_MODES,
                        metavar="never|auto|always",
                        help="continue the run in run.dir from its latest checkpoint (bare "
                             "--resume: always); auto continues one if run.dir holds one and "
                             "otherwise starts fresh (default: run.resume, never)")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start a new run from this checkpoint's network (e.g. keisei-pretrain's; "
                             "a run directory stands for its newest checkpoint): "
                             "fresh counters and optimizer; [model] must match it. With "
                             "train.init_kl_coef, PPO is held near its policy at first")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")
    parser.add_argument("--bind", default=os.environ.get("KEISEI_BIND", DEFAULT_BIND),
                        metavar="tcp://HOST:PORT",
                        help="ROUTER address actors connect to (weights are published one port "
                             f"above; default: $KEISEI_BIND or {DEFAULT_BIND}). Binding beyond "
                             "127.0.0.1 exposes the learner to the network: see the README's "
                             "security note")
    parser.add_argument("--local-actors", type=int, default=0, metavar="N",
                        help="start N keisei-actor processes on this machine and reap them on exit")
    parser.add_argument("--beside-workers", type=int, default=0, metavar="N",
                        help="also make engine games on N keisei-generate processes beside the "
                             "learner and train them beside self-play as they come "
                             "(train.supervised_records: default RUN_DIR/records-beside); the "
                             "learner takes the other cores (run.threads, unless set); stopped "
                             "with the learner (default 0: none)")
    parser.add_argument("--beside-engine", default="usi:fairy-stockfish", metavar="SPEC",
                        help="their engine, as keisei-generate --engine (default "
                             "usi:fairy-stockfish)")
    parser.add_argument("--beside-depth", type=int, default=4, metavar="N",
                        help="its search depth, for usi: engines (default 4)")
    parser.add_argument("--remote-actors", action="store_true",
                        help="collect from actors that connect to --bind (without local ones)")
    parser.add_argument("--curve-keys", default=os.environ.get("KEISEI_CURVE_KEYS"), metavar="DIR",
                        help="accept only actors with an authorised CurveZMQ key: DIR is made by "
                             "keisei-keys (server.key_secret, authorized/) (default: $KEISEI_CURVE_KEYS)")
    parser.add_argument("--web", metavar="[HOST:]PORT", default=os.environ.get("KEISEI_WEB"),
                        help="serve a live web view of the run (default host 127.0.0.1; a host "
                             "beyond loopback exposes it, read-only, to the network; default: "
                             "$KEISEI_WEB, none)")
    parser.add_argument("--ranks", type=int, metavar="N",
                        help="train as N learner processes on this machine (torch.distributed: "
                             "gloo on CPU, NCCL with one GPU per rank), started as torchrun "
                             "would; rank r binds --bind's port + 2r and starts its own "
                             "--local-actors. Leave it out under torchrun (see docs/guides/actors.md)")
    parser.add_argument("--status", nargs="?", const="", metavar="RUN_DIR",
                        help="print the state, mode and actor table of the run in RUN_DIR "
                             "(default: run.dir) from its status.json, and exit: 0 for a "
                             "learner that runs (its status fresh) or a run that finished; 1 "
                             "when the status is missing, older than "
                             f"{STATUS_STALE_SECONDS:.0f} s, or the run was interrupted or "
                             "failed (a Docker health check)")
    return add_version(parser)


def resolve_config(args: argparse.Namespace) -> tuple[Config, bool]:
    """The configuration and whether to resume: defaults < saved run config (when
    resuming) < --config file < --set. ``--resume`` (or ``run.resume``) ``auto`` resumes
    exactly when the run directory holds a run.

    :raises ConfigError: for any invalid value, or a resume with nothing to resume.
    """
    check_sections(args.overrides, SECTIONS, "keisei-learner")
    config = load_config(args.config, args.overrides)
    mode = args.resume or config.run.resume
    run_dir = Path(config.run.dir)
    if mode == "never" or (mode == "auto" and not RunDir(run_dir).holds_run()):
        return config, False
    return load_saved_config(args.config, args.overrides, run_dir, f"--resume {mode}"), True


def dashboard_log_handler() -> logging.Handler:
    """Log lines for a terminal with the live dashboard: printed above it."""
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False)
    handler.setFormatter(logging.Formatter("%(process)d %(name)s %(message)s"))
    return handler


def without_ranks(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--ranks N`` (what each rank is started with)."""
    out: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--ranks":
            skip = True
        elif not item.startswith("--ranks="):
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        info = RankInfo.from_env()
    except ConfigError as exc:
        print(f"keisei-learner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    status = args.status is not None
    if args.ranks is not None and not (status or args.print_config):
        if args.ranks < 1:
            print(f"keisei-learner: --ranks {args.ranks}: must be 1 or more", file=sys.stderr)
            return ExitCode.USAGE
        if info is not None:
            print("keisei-learner: --ranks under torchrun (WORLD_SIZE is set): leave --ranks out, "
                  "torchrun starts the ranks", file=sys.stderr)
            return ExitCode.USAGE
        if args.ranks > 1 and args.beside_workers:
            print("keisei-learner: --beside-workers with --ranks: start keisei-generate beside "
                  "the learner and set train.supervised_records instead", file=sys.stderr)
            return ExitCode.USAGE
        if args.ranks > 1:
            setup_logging()
            return launch(args.ranks, without_ranks(argv))
    if info is not None and not (status or args.print_config):
        leave_rank(train(args, info))
    try:
        if args.print_config or status:
            config, _ = resolve_config(args)
            if args.print_config:
                if args.beside_workers:  # the settings the generator brings, as a run has them
                    config, _ = engine_games_beside_learner(args, config, info, make_folder=False)
                sys.stdout.write(config.to_toml())
                return ExitCode.SUCCESS
            return print_status(Path(args.status or config.run.dir))
    except ConfigError as exc:
        print(f"keisei-learner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return train(args, None)


def train(args: argparse.Namespace, info: RankInfo | None) -> int:
    """Train as a single process (``info`` None: a world of one) or as one rank of a
    multi-rank learner: join the others, take rank 0's configuration and resume decision,
    train. Returns the exit code: rank 0's is the job's, the others' say how they ended."""
    prefix = "" if info is None else f"rank {info.rank}: "
    try:
        if info is None or info.rank == 0:
            config, resume = resolve_config(args)
        else:  # rank 0's configuration (and its resume decision) arrive below
            config, resume = load_config(args.config, args.overrides), False
        if info is None:
            on_tty = config.display.mode == "rich" or (config.display.mode == "auto"
                                                       and sys.stdout.isatty())
            setup_logging(dashboard_log_handler() if on_tty else None)
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(
                f"%(asctime)s rank {info.rank} %(process)d %(name)s %(levelname)s %(message)s"))
            setup_logging(handler)
            config = on_rank_device(config, info)
        from keisei.checkpoint import CheckpointError
        from keisei.runs import resolve_device
        from learner.app import Learner, LearnerOptions, RunOutcome
        from learner.ranks import Alone, RankFailed, Ranks, World, check_divisible

        device, _ = resolve_device(config)
        from learner.pipeline import cores_left

        # the cores a generator beside leaves, chosen now or by the run being resumed
        threads_chosen = (args.beside_workers > 0
                          and config.run.threads in (0, cores_left(args.beside_workers)))
        if args.beside_workers:
            config, beside = engine_games_beside_learner(args, config, info)
        options = LearnerOptions(local_actors=args.local_actors, remote_actors=args.remote_actors,
                                 bind=args.bind, curve_keys=args.curve_keys, resume=resume,
                                 init_from=args.init_from, web=args.web,
                                 threads_chosen=threads_chosen)
        options.check()
    except ConfigError as exc:
        print(f"keisei-learner: {prefix}{exc}", file=sys.stderr)
        return ExitCode.USAGE
    outcome: RunOutcome | None = None
    try:
        world: World = Ranks(info, device, config.ranks.timeout) if info is not None else Alone()
        with world:
            if info is not None:  # every rank trains rank 0's run
                config_dict, resume = world.broadcast((config.to_dict(), resume))
                config = on_rank_device(build_config([config_dict]), info)
                options = replace(options, resume=resume)
            check_divisible(config.train.steps_per_epoch, config.train.minibatch_size, world.size)
            with Learner(config, options, world=world) as learner, stop_on_signals(learner.stop):
                with beside() if args.beside_workers else nullcontext():
                    outcome = learner.run()
    except ConfigError as exc:
        print(f"keisei-learner: {prefix}{exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RankFailed as exc:  # before training, or while leaving: another rank is gone
        logger.error("%s", exc)
        return EXIT_RANK_LOST
    except (CheckpointError, ProtocolError, OSError) as exc:
        logger.error("%s", exc)  # before training: cannot start; after: tearing down failed
        return ExitCode.USAGE if outcome is None else ExitCode.FAILURE
    return EXIT_CODES[outcome.value]


def engine_games_beside_learner(args: argparse.Namespace, config: Config, info: RankInfo | None,
                                make_folder: bool = True,
                                ) -> tuple[Config, Callable[[], AbstractContextManager[object]]]:
    """``--beside-workers``: the configuration that reads the generator's games
    (``train.supervised_records``, or ``RUN_DIR/records-beside`` where it is empty) on the
    cores the generator leaves (``run.threads``, where it is 0), and the generator to run
    while the learner trains, with a new seed at each start. ``make_folder`` False
    (``--print-config``): the configuration alone, nothing made on disk.

    :raises ConfigError: for a negative count, a multi-rank learner or a missing engine.
    """
    from learner.pipeline import (
        RECORDS_BESIDE,
        beside_command,
        cores_left,
        generator_beside,
        missing_program,
        next_beside_seed,
    )

    problems = []
    if args.beside_workers < 0:
        problems.append(f"--beside-workers {args.beside_workers}: must be 0 or more")
    if info is not None:
        problems.append("--beside-workers with more than one rank: start keisei-generate "
                        "beside the learner and set train.supervised_records instead")
    if args.beside_depth < 1:
        problems.append(f"--beside-depth {args.beside_depth}: must be 1 or more")
    program = missing_program(args.beside_engine)
    if program is not None:
        problems.append(f"--beside-engine {args.beside_engine}: engine program {program!r} is "
                        f"not on PATH or in /usr/games (Debian: apt-get install {program})")
    folder = Path(config.train.supervised_records or Path(config.run.dir) / RECORDS_BESIDE)
    if not problems and make_folder:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"--beside-workers: cannot make the games' folder {folder}: "
                            f"{exc.strerror or exc}")
    if problems:
        raise ConfigError(problems)
    threads = config.run.threads or cores_left(args.beside_workers)
    config = replace(config, run=replace(config.run, threads=threads),
                     train=replace(config.train, supervised_records=str(folder)))

    def beside() -> AbstractContextManager[object]:
        command = beside_command(args.beside_engine, args.beside_depth, args.beside_workers,
                                 None, next_beside_seed(folder), folder)
        logger.info("engine games beside the learner: %s (its output in %s)", " ".join(command),
                    folder / "generate.log")
        return generator_beside(command, folder)

    return config, beside


def leave_rank(code: int) -> NoReturn:
    """End a rank's process with ``code`` once its work is done and saved, skipping the
    interpreter's teardown: gloo's worker threads can abort it (SIGABRT, "terminate called
    without an active exception") after a clean run, which would read as a failed rank."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def on_rank_device(config: Config, info: RankInfo) -> Config:
    """``config`` with a CUDA device replaced by this rank's own (``cuda:LOCAL_RANK``)."""
    if not config.run.device.startswith("cuda"):
        return config
    return replace(config, run=replace(config.run, device=f"cuda:{info.local_rank}"))


if __name__ == "__main__":
    sys.exit(main())
