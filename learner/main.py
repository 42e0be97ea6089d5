"""``keisei-learner``: train a Shogi policy by self-play PPO.

Usage: ``keisei-learner [--config FILE.toml] [--set section.key=value ...] [--resume]
[--print-config]``. Exit codes: 0 finished, 1 failed, 2 bad configuration or
arguments, 130 stopped by SIGINT/SIGTERM (after writing a checkpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from enum import IntEnum
from pathlib import Path
from types import FrameType

import numpy as np
import torch

from keisei.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from keisei.config import Config, ConfigError, load_config, read_toml
from keisei.model import build_model, count_parameters, resolve_precision
from keisei.protocol import ProtocolError, load_keys
from keisei.selfplay import Collector
from learner.actors import ActorTable
from learner.buffer import ExperienceBuffer
from learner.dashboard import Dashboard, MetricsWriter
from learner.local_actors import LocalActors
from learner.ratings import Ratings
from learner.server import LearnerServer, local_endpoint, weights_bind_address
from learner.supervisor import Supervisor
from learner.trainer import Callback, Metrics, Trainer, TrainingInterrupted, train

logger = logging.getLogger(__name__)


STATUS_STALE_SECONDS = 15.0
FINAL_RATING_SECONDS = 300.0
"""At the end of a finished run, how long to wait for a rating job still running."""


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-learner", description="Train a Shogi policy by self-play PPO.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="configuration keys (set in the TOML file or with --set):\n" + Config.describe())
    parser.add_argument("--config", metavar="FILE.toml", default=os.environ.get("KEISEI_CONFIG"),
                        help="TOML configuration file (default: $KEISEI_CONFIG)")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one key (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run.dir from its latest checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")
    parser.add_argument("--bind", default=os.environ.get("KEISEI_BIND", "tcp://127.0.0.1:5555"),
                        metavar="tcp://HOST:PORT",
                        help="ROUTER address actors connect to (weights are published one port "
                             "above; default: $KEISEI_BIND or tcp://127.0.0.1:5555). Binding beyond "
                             "127.0.0.1 exposes the learner to the network: see the README's "
                             "security note")
    parser.add_argument("--local-actors", type=int, default=0, metavar="N",
                        help="start N keisei-actor processes on this machine and reap them on exit")
    parser.add_argument("--remote-actors", action="store_true",
                        help="collect from actors that connect to --bind (without local ones)")
    parser.add_argument("--curve-keys", default=os.environ.get("KEISEI_CURVE_KEYS"), metavar="DIR",
                        help="accept only actors with an authorised CurveZMQ key: DIR is made by "
                             "keisei-keys (server.key_secret, authorized/) (default: $KEISEI_CURVE_KEYS)")
    parser.add_argument("--status", action="store_true",
                        help="print the mode and actor table of the run in run.dir (from its "
                             "status.json, refreshed each second while it runs) and exit; the exit "
                             f"code is 1 when the status is older than {STATUS_STALE_SECONDS:.0f} s "
                             "(a health check)")
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """Defaults < saved run config (with --resume) < --config file < --set.

    :raises ConfigError: for any invalid value, or --resume with nothing to resume.
    """
    config = load_config(args.config, args.overrides)
    if not args.resume:
        return config
    saved = Path(config.run.dir) / "config.toml"
    if not saved.is_file():
        raise ConfigError([f"--resume: {saved} does not exist; there is no run to resume"])
    return load_config(args.config, args.overrides, base=read_toml(saved))


def check_run_directory(config: Config, resume: bool) -> Path | None:
    """The checkpoint to resume from (or None for a new run).

    :raises ConfigError: if a new run would overwrite an existing one, or a resume finds
        no checkpoint.
    """
    run_dir = Path(config.run.dir)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if resume:
        if checkpoint is None:
            raise ConfigError([f"--resume: no checkpoint in {run_dir / 'checkpoints'}"])
        return checkpoint
    if checkpoint is not None or (run_dir / "metrics.jsonl").exists():
        raise ConfigError([f"run.dir = {str(run_dir)!r} already holds a run; pass --resume to "
                           "continue it, or choose another run.dir"])
    return None


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def setup_logging(dashboard_on_tty: bool) -> None:
    handler: logging.Handler
    if dashboard_on_tty:
        from rich.logging import RichHandler  # keeps log lines above the live view

        handler = RichHandler(show_path=False)
        handler.setFormatter(logging.Formatter("%(process)d %(name)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM request a stop at the next safe point; a second SIGINT aborts at once."""
    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("received %s: stopping after the current step, then checkpointing",
                       signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class CheckpointEvery:
    """Callback: write a checkpoint every ``every_epochs`` epochs, and beside it the latest
    finished self-play game as KIF and CSA in ``games/`` (open them in a Shogi GUI)."""

    def __init__(self, trainer: Trainer, directory: Path, every_epochs: int, keep: int,
                 ratings: Ratings | None = None) -> None:
        self.trainer, self.directory = trainer, directory
        self.every_epochs, self.keep = every_epochs, keep
        self.ratings = ratings
        self.saved_step = -1

    def __call__(self, metrics: Metrics) -> None:
        if self.trainer.epoch % self.every_epochs == 0:
            self.save()

    def save(self, force: bool = False) -> Path | None:
        """Write a checkpoint unless this step has one (``force``: write it again)."""
        if self.trainer.step == self.saved_step and not force:
            return None
        state = self.trainer.state_dict()
        if self.ratings is not None:
            state["ratings"] = self.ratings.state_dict()
        path = save_checkpoint(self.directory, self.trainer.step, state, self.keep)
        self.saved_step = self.trainer.step
        self._write_sample_game()
        logger.info("checkpoint %s (step %d, policy version %d)", path, self.trainer.step,
                    self.trainer.policy_version)
        return path


    def _write_sample_game(self) -> None:
        game = self.trainer.buffer.last_game
        if game is None:
            return
        folder = self.directory.parent / "games"
        folder.mkdir(exist_ok=True)
        record = game.to_game()
        names = (f"Keisei v{int(game.policy_versions[0])}", f"Keisei v{int(game.policy_versions[-1])}")
        stem = folder / f"game-{self.trainer.step:012d}"
        stem.with_suffix(".kif").write_text(record.to_kif(names), encoding="cp932")
        stem.with_suffix(".csa").write_text(record.to_csa(names), encoding="utf-8")


def build_trainer(config: Config, stop: threading.Event, threads: int | None = None) -> Trainer:
    """Wire model, buffer, collector and trainer together (the one place they meet).

    ``threads`` (torch CPU threads) defaults to ``run.threads``, or all cores.
    """
    device = torch.device(config.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"run.device = {config.run.device!r}: CUDA is not available here"])
    try:
        resolve_precision(config.run.precision, device)
    except ValueError as exc:
        raise ConfigError([f"run.precision = {config.run.precision!r}: {exc}"]) from exc
    torch.set_num_threads(threads or config.run.threads or os.cpu_count() or 1)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed % 2**32)
    torch.manual_seed(config.run.seed)
    model = build_model(config.model).to(device)
    selfplay, train_config = config.selfplay, config.train
    # Room for two epochs plus every game the collector can finish while filling one, so
    # actors' games keep arriving during an update.
    capacity = 2 * train_config.steps_per_epoch + selfplay.games * selfplay.max_plies
    buffer = ExperienceBuffer(train_config.steps_per_epoch, capacity, gamma=train_config.gamma,
                              gae_lambda=train_config.gae_lambda,
                              max_policy_lag=train_config.max_policy_lag,
                              shaping=train_config.shaping_scale > 0,
                              shaping_lambda=train_config.shaping_lambda)
    collector = Collector(model, selfplay, buffer, device=device, seed=config.run.seed,
                          precision=config.run.precision)
    return Trainer(config, model, buffer, collector, device, stop)


def run(config: Config, resume_from: Path | None, args: argparse.Namespace) -> ExitCode:
    stop = threading.Event()
    # Local actors take one thread each, but they pause as soon as the next epoch is
    # buffered (back-pressure in the heartbeat ack), so they and the PPO update take turns
    # on the cores rather than share them: the learner keeps every core (run.threads).
    trainer = build_trainer(config, stop)
    run_dir = Path(config.run.dir)
    ratings = Ratings(config.evaluation, run_dir, trainer)
    if resume_from is not None:
        resume(trainer, config, resume_from, ratings)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "config.toml", config.to_toml())
    logger.info("run %s: %s parameters, %d games in lock-step, device %s, %d torch threads", run_dir,
                f"{count_parameters(trainer.model):,}", config.selfplay.games, trainer.device,
                torch.get_num_threads())
    checkpoints = CheckpointEvery(trainer, run_dir / "checkpoints", config.checkpoint.every_epochs,
                                  config.checkpoint.keep, ratings)
    status = ExitCode.FAILURE
    actors = ActorTable()
    supervisor: Supervisor | None = None
    with ExitStack() as stack:
        callbacks: list[Callback] = []
        if args.local_actors or args.remote_actors:
            supervisor = wire_actors(stack, args, config, trainer, actors, callbacks)
        metrics_writer = stack.enter_context(MetricsWriter(run_dir / "metrics.jsonl",
                                                           run_dir / "tensorboard"))
        dashboard = stack.enter_context(Dashboard(trainer, config.display, actors=actors,
                                                  supervisor=supervisor, ratings=ratings))
        stack.enter_context(ratings)
        stack.enter_context(stop_on_signals(stop))
        callbacks += [ratings, metrics_writer, checkpoints, dashboard]
        try:
            asyncio.run(train(trainer, callbacks))
            status = ExitCode.SUCCESS
            # The final policy's rating goes to ratings.json and the checkpoint; metrics.jsonl
            # keeps exactly one line per epoch.
            if ratings.finish(timeout=FINAL_RATING_SECONDS):
                checkpoints.save(force=True)
        except (TrainingInterrupted, KeyboardInterrupt):
            status = ExitCode.INTERRUPTED
            logger.warning("interrupted at step %d; %d plies of unfinished games discarded",
                           trainer.step, trainer.collector.in_flight_steps())
        except Exception:
            logger.exception("training failed at step %d", trainer.step)
        finally:
            checkpoints.save()
    return status


def wire_actors(stack: ExitStack, args: argparse.Namespace, config: Config, trainer: Trainer,
                actors: ActorTable, callbacks: list[Callback]) -> Supervisor:
    """Everything distributed collection needs, entered on ``stack`` so it is undone in
    reverse order on any exit: the server (sockets and their thread), then the local actor
    processes, then the supervisor that watches both. Adds the callbacks that publish each
    new policy and report the actors and mode."""
    keys = load_keys(args.curve_keys, "learner") if args.curve_keys else None
    server = stack.enter_context(LearnerServer(args.bind, trainer.buffer, actors, config.to_dict(),
                                               keys=keys))
    server.publish(trainer.model.state_dict(), trainer.policy_version)  # version 0, or the resumed one
    trainer.mode = "distributed"
    callbacks.append(lambda metrics: publish_weights(server, trainer, actors, metrics))
    local = None
    if args.local_actors:
        local = stack.enter_context(LocalActors(args.local_actors, local_endpoint(args.bind),
                                                Path(config.run.dir) / "actors"))
    supervisor = stack.enter_context(Supervisor(config.supervisor, trainer, server, actors, local,
                                                Path(config.run.dir) / "status.json"))
    callbacks.append(supervisor.add_metrics)
    return supervisor


def resume(trainer: Trainer, config: Config, checkpoint: Path, ratings: Ratings) -> None:
    """Load a checkpoint into ``trainer`` (and the run's Elo table into ``ratings``).

    :raises ConfigError: if the checkpoint's network differs from ``config``'s.
    """
    state = load_checkpoint(checkpoint, map_location=trainer.device)
    saved_model = state["config"]["model"]
    if saved_model != config.to_dict()["model"]:
        raise ConfigError([f"[model] {config.to_dict()['model']} differs from the checkpoint's "
                           f"{saved_model}; a resumed run keeps its network"])
    trainer.load_state_dict(state)
    if "ratings" in state:
        ratings.load_state_dict(state["ratings"])
    logger.info("resumed from %s at step %d, policy version %d", checkpoint, trainer.step,
                trainer.policy_version)


def publish_weights(server: LearnerServer, trainer: Trainer, actors: ActorTable,
                    metrics: Metrics) -> None:
    """Callback: send the new policy to the actors and add their figures to the metrics."""
    server.publish(trainer.model.state_dict(), trainer.policy_version)
    now = time.monotonic()
    table = actors.snapshot()
    metrics["actors"] = [info.as_dict(now) for info in table]
    metrics["actor_steps_per_second"] = sum(info.steps_per_second for info in table
                                            if info.state in ("healthy", "starting"))
    metrics.update({f"wire_{key}": value for key, value in server.counters.items()})


def print_status(run_dir: Path) -> ExitCode:
    """``--status``: the run's mode, counters, actors and recent mode transitions."""
    path = run_dir / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"keisei-learner: no readable status in {path} ({exc}); it is written while a run "
              "with actors is going", file=sys.stderr)
        return ExitCode.USAGE
    age = time.time() - status["time"]
    stale = age > STATUS_STALE_SECONDS
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
    if stale:
        print(f"status is {age:.0f} s old: the learner is not running or not responding", file=sys.stderr)
        return ExitCode.FAILURE
    return ExitCode.SUCCESS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        if args.print_config:
            sys.stdout.write(config.to_toml())
            return ExitCode.SUCCESS
        if args.status:
            return print_status(Path(config.run.dir))
        resume_from = check_run_directory(config, args.resume)
    except ConfigError as exc:
        print(f"keisei-learner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    on_tty = config.display.mode == "rich" or (config.display.mode == "auto" and sys.stdout.isatty())
    setup_logging(on_tty)
    if args.local_actors < 0:
        print("keisei-learner: --local-actors must be 0 or more", file=sys.stderr)
        return ExitCode.USAGE
    try:
        weights_bind_address(args.bind)
    except ValueError as exc:
        print(f"keisei-learner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        return run(config, resume_from, args)
    except (ConfigError, CheckpointError, ProtocolError, OSError) as exc:
        logger.error("%s", exc)
        return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
