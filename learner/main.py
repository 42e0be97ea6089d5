"""``keisei-learner``: train a Shogi policy by self-play PPO.

Usage: ``keisei-learner [--config FILE.toml] [--set section.key=value ...] [--resume]
[--print-config]``. Exit codes: 0 finished, 1 failed, 2 bad configuration or
arguments, 130 stopped by SIGINT/SIGTERM (after writing a checkpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from types import FrameType

import numpy as np
import torch

from keisei.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from keisei.config import Config, ConfigError, load_config, read_toml
from keisei.model import build_model, count_parameters, resolve_precision
from keisei.selfplay import Collector
from learner.buffer import ExperienceBuffer
from learner.dashboard import Dashboard, MetricsWriter
from learner.trainer import Metrics, Trainer, TrainingInterrupted, train

logger = logging.getLogger(__name__)


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
    parser.add_argument("--config", metavar="FILE.toml", help="TOML configuration file")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one key (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run.dir from its latest checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")
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
    """Callback: write a checkpoint every ``every_epochs`` epochs."""

    def __init__(self, trainer: Trainer, directory: Path, every_epochs: int, keep: int) -> None:
        self.trainer, self.directory = trainer, directory
        self.every_epochs, self.keep = every_epochs, keep
        self.saved_step = -1

    def __call__(self, metrics: Metrics) -> None:
        if self.trainer.epoch % self.every_epochs == 0:
            self.save()

    def save(self) -> Path | None:
        if self.trainer.step == self.saved_step:
            return None
        path = save_checkpoint(self.directory, self.trainer.step, self.trainer.state_dict(), self.keep)
        self.saved_step = self.trainer.step
        logger.info("checkpoint %s (step %d, policy version %d)", path, self.trainer.step,
                    self.trainer.policy_version)
        return path


def build_trainer(config: Config, stop: threading.Event) -> Trainer:
    """Wire model, buffer, collector and trainer together (the one place they meet)."""
    device = torch.device(config.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"run.device = {config.run.device!r}: CUDA is not available here"])
    try:
        resolve_precision(config.run.precision, device)
    except ValueError as exc:
        raise ConfigError([f"run.precision = {config.run.precision!r}: {exc}"]) from exc
    torch.set_num_threads(config.run.threads or os.cpu_count() or 1)
    random.seed(config.run.seed)
    np.random.seed(config.run.seed % 2**32)
    torch.manual_seed(config.run.seed)
    model = build_model(config.model).to(device)
    selfplay, train_config = config.selfplay, config.train
    # Room for one epoch plus every game the collector can finish while filling it.
    capacity = train_config.steps_per_epoch + selfplay.games * selfplay.max_plies
    buffer = ExperienceBuffer(train_config.steps_per_epoch, capacity, gamma=train_config.gamma,
                              gae_lambda=train_config.gae_lambda,
                              max_policy_lag=train_config.max_policy_lag)
    collector = Collector(model, selfplay, buffer, device=device, seed=config.run.seed,
                          precision=config.run.precision)
    return Trainer(config, model, buffer, collector, device, stop)


def run(config: Config, resume_from: Path | None) -> ExitCode:
    stop = threading.Event()
    trainer = build_trainer(config, stop)
    run_dir = Path(config.run.dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=trainer.device)
        saved_model = state["config"]["model"]
        if saved_model != config.to_dict()["model"]:
            raise ConfigError([f"[model] {config.to_dict()['model']} differs from the checkpoint's "
                               f"{saved_model}; a resumed run keeps its network"])
        trainer.load_state_dict(state)
        logger.info("resumed from %s at step %d, policy version %d", resume_from, trainer.step,
                    trainer.policy_version)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_text_atomically(run_dir / "config.toml", config.to_toml())
    logger.info("run %s: %s parameters, %d games in lock-step, device %s", run_dir,
                f"{count_parameters(trainer.model):,}", config.selfplay.games, trainer.device)
    checkpoints = CheckpointEvery(trainer, run_dir / "checkpoints", config.checkpoint.every_epochs,
                                  config.checkpoint.keep)
    status = ExitCode.FAILURE
    with MetricsWriter(run_dir / "metrics.jsonl") as metrics, \
            Dashboard(trainer, config.display) as dashboard, stop_on_signals(stop):
        try:
            asyncio.run(train(trainer, [metrics, checkpoints, dashboard]))
            status = ExitCode.SUCCESS
        except (TrainingInterrupted, KeyboardInterrupt):
            status = ExitCode.INTERRUPTED
            logger.warning("interrupted at step %d; %d plies of unfinished games discarded",
                           trainer.step, trainer.collector.in_flight_steps())
        except Exception:
            logger.exception("training failed at step %d", trainer.step)
        finally:
            checkpoints.save()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        if args.print_config:
            sys.stdout.write(config.to_toml())
            return ExitCode.SUCCESS
        resume_from = check_run_directory(config, args.resume)
    except ConfigError as exc:
        print(f"keisei-learner: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    on_tty = config.display.mode == "rich" or (config.display.mode == "auto" and sys.stdout.isatty())
    setup_logging(on_tty)
    try:
        return run(config, resume_from)
    except (ConfigError, CheckpointError) as exc:
        logger.error("%s", exc)
        return ExitCode.USAGE


if __name__ == "__main__":
    sys.exit(main())
