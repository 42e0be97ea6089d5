"""``keisei-pretrain``: supervised pre-training from game records, before self-play.

Usage::

    keisei-pretrain [--config FILE.toml] [--set section.key=value ...] [--data DIR]
                    [--init-from CHECKPOINT] [--resume] RECORDS...

``RECORDS`` are CSA, KIF and USI files, folders of them and ``.zip``/``.tar.gz``
archives (``keisei.kifu``). They are read once into a data set of compact position
shards (``keisei.dataset``; ``run.dir/data`` unless ``--data DIR`` names another,
which is reused when it already holds one), a share of games held out for
validation. The network (``[model]``, the same presets as the learner) then learns
the recorded move (cross-entropy over the legal moves) and the game's result (the
value, from the mover's view), weighted by ``[pretrain]``. ``--init-from`` starts that
network from a checkpoint's weights (e.g. an earlier pre-training's, on new records)
instead of fresh ones, with a fresh optimizer, schedule and counters.

After each epoch (and every ``pretrain.validate_every`` positions) it scores the
held-out positions, writes one line to ``run.dir/metrics.jsonl`` (and TensorBoard),
and a checkpoint in ``run.dir/checkpoints`` that ``keisei-eval``, ``keisei-usi`` and
``keisei-learner --init-from`` read. ``--resume`` continues exactly where the newest
checkpoint stands; SIGINT/SIGTERM stop after the current batch with a checkpoint.
Exit codes: 0 finished, 1 failed, 2 bad arguments, configuration or records, 130
stopped by a signal.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

from keisei.checkpoint import CheckpointError
from keisei.cli import ExitCode, HelpConfig, add_version, setup_logging, stop_on_signals
from keisei.config import Config, ConfigError, check_sections, load_config, load_saved_config
from keisei.dataset import (
    DatasetError,
    ShardSet,
    decode_samples,
    prepare_dataset,
    read_summary,
)
from keisei.errors import KeiseiError
from keisei.files import write_text_atomically
from keisei.metrics import MetricsWriter
from keisei.model import (
    PolicyValueNet,
    autocast,
    build_model,
    count_parameters,
    supervised_losses,
    supervised_tensors,
)
from keisei.ppo import learning_rate_at
from keisei.runs import (
    CheckpointWriter,
    RunDir,
    check_run_directory,
    load_newest,
    load_start,
    resolve_device,
)

logger = logging.getLogger(__name__)


class PretrainInterrupted(KeiseiError):
    """A stop was requested; raised between batches."""


@dataclass(frozen=True)
class PretrainReport:
    """One validation point: what ``metrics.jsonl`` and the dashboard show."""

    step: int
    """Training positions seen so far."""
    epoch: float
    batches: int
    learning_rate: float
    train_policy_loss: float
    train_value_loss: float
    train_accuracy: float
    val_policy_loss: float
    val_value_loss: float
    val_accuracy: float
    val_positions: int
    positions_per_second: float
    seconds: float
    time: float
    val_prior_loss: float = math.nan
    """The prior head's cross-entropy on the held-out moves (``model.prior_head``; null
    without one)."""
    val_prior_accuracy: float = math.nan
    """Its top-1 on them (null likewise)."""

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` record (NaN, e.g. with no held-out games, as null)."""
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in asdict(self).items()}


@dataclass
class Figures:
    """Running sums of losses and hits over positions."""

    positions: int = 0
    valued: int = 0
    policy: float = 0.0
    value: float = 0.0
    hits: int = 0
    prior: float = 0.0  # the prior head's (model.prior_head), validation only
    prior_hits: int = 0

    def add(self, count: int, valued: int, policy_sum: float, value_sum: float, hits: int) -> None:
        self.positions += count
        self.valued += valued
        self.policy += policy_sum
        self.value += value_sum
        self.hits += hits

    def prior_means(self) -> tuple[float, float]:
        """The prior head's (loss, top-1); NaN where nothing was counted."""
        positions = self.positions or math.nan
        return self.prior / positions, self.prior_hits / positions

    def means(self) -> tuple[float, float, float]:
        """(policy loss, value loss, top-1 accuracy); NaN where nothing was counted."""
        positions = self.positions or math.nan
        return self.policy / positions, self.value / (self.valued or math.nan), self.hits / positions


class Pretrainer:
    """The network, optimizer, schedule and counters of a pre-training run."""

    def __init__(self, config: Config, train_set: ShardSet, val_set: ShardSet,
                 stop: threading.Event) -> None:
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.stop = stop
        settings = config.pretrain
        self.device, self.autocast_dtype = resolve_device(config)
        torch.manual_seed(config.run.seed)
        random.seed(config.run.seed)
        self.model: PolicyValueNet = build_model(config.model).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.learning_rate,
                                           weight_decay=settings.weight_decay)
        # float16 (CUDA) needs loss scaling against underflow, as in the learner
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.batches_per_epoch = len(train_set) // settings.batch_size
        if self.batches_per_epoch == 0:
            raise DatasetError(f"{len(train_set)} training positions make no batch of "
                               f"pretrain.batch_size = {settings.batch_size}")
        self.total_batches = self.batches_per_epoch * settings.epochs
        self.rng = np.random.default_rng(config.run.seed)
        self.epoch_rng_state: dict[str, Any] = copy.deepcopy(dict(self.rng.bit_generator.state))
        self.step = 0
        self.batches = 0
        self.batch_in_epoch = 0
        self.epoch = 0
        self.seconds = 0.0  # training time over all sessions (the time budget counts it)
        self.running = Figures()

    # --- training -----------------------------------------------------------------------
    def progress(self) -> float:
        """How far through the run: batches, or the time budget if that is further along."""
        done = self.batches / self.total_batches
        minutes = self.config.pretrain.minutes
        if minutes:
            done = max(done, self.seconds / (60 * minutes))
        return min(done, 1.0)

    def finished(self) -> bool:
        return self.batches >= self.total_batches or (
            bool(self.config.pretrain.minutes) and self.seconds >= 60 * self.config.pretrain.minutes)

    def epoch_batches(self) -> Iterator[np.ndarray]:
        """The rest of the current epoch's batches (a resumed run skips those it trained)."""
        self.rng.bit_generator.state = copy.deepcopy(self.epoch_rng_state)
        settings = self.config.pretrain
        batches = self.train_set.batches(settings.batch_size, self.rng, settings.shuffle_shards)
        return itertools.islice(batches, self.batch_in_epoch, None)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_rng_state = copy.deepcopy(dict(self.rng.bit_generator.state))

    def train_batch(self, samples: np.ndarray) -> None:
        """One gradient step on ``samples``."""
        if self.stop.is_set():
            raise PretrainInterrupted(f"stop requested at position {self.step}")
        started = time.perf_counter()
        settings = self.config.pretrain
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(settings.lr_schedule, settings.learning_rate,
                                           self.progress())
        batch = supervised_tensors(decode_samples(samples), self.device)
        self.model.train()
        with autocast(self.device, self.autocast_dtype):
            logits, prior, values = self.model.heads(batch["observations"])
        policy, value, hits, known = supervised_losses(logits, values, batch)
        valued = float(known.sum())
        loss = (settings.policy_weight * policy.mean()
                + settings.value_weight * value.sum() / max(valued, 1.0))
        if prior is not None:  # model.prior_head: the search's prior learns the same moves
            loss = loss + settings.policy_weight * supervised_losses(prior, values, batch)[0].mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {float(loss)} at position {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.running.add(len(samples), int(valued), float(policy.detach().sum()),
                         float(value.detach().sum()), int(hits.sum()))
        self.step += len(samples)
        self.batches += 1
        self.batch_in_epoch += 1
        self.seconds += time.perf_counter() - started

    @torch.no_grad()
    def validate(self) -> Figures:
        """Losses and top-1 accuracy on the first ``pretrain.val_positions`` held-out positions."""
        figures = Figures()
        if not len(self.val_set):
            return figures
        self.model.eval()
        limit = self.config.pretrain.val_positions
        for samples in self.val_set.batches(512, None):
            samples = samples[:limit - figures.positions]
            batch = supervised_tensors(decode_samples(samples), self.device)
            with autocast(self.device, self.autocast_dtype):
                logits, prior, values = self.model.heads(batch["observations"])
            policy, value, hits, known = supervised_losses(logits, values, batch)
            figures.add(len(samples), int(known.sum()), float(policy.sum()), float(value.sum()),
                        int(hits.sum()))
            if prior is not None:
                prior_loss, _, prior_hits, _ = supervised_losses(prior, values, batch)
                figures.prior += float(prior_loss.sum())
                figures.prior_hits += int(prior_hits.sum())
            if figures.positions >= limit:
                break
        return figures

    def report(self, val: Figures, rate: float) -> PretrainReport:
        train_policy, train_value, train_accuracy = self.running.means()
        val_policy, val_value, val_accuracy = val.means()
        val_prior, val_prior_accuracy = (val.prior_means() if self.model.prior_head is not None
                                         else (math.nan, math.nan))
        self.running = Figures()
        return PretrainReport(
            step=self.step, epoch=self.batches / self.batches_per_epoch, batches=self.batches,
            learning_rate=self.optimizer.param_groups[0]["lr"], train_policy_loss=train_policy,
            train_value_loss=train_value, train_accuracy=train_accuracy,
            val_policy_loss=val_policy, val_value_loss=val_value, val_accuracy=val_accuracy,
            val_positions=val.positions, positions_per_second=rate, seconds=self.seconds,
            time=time.time(), val_prior_loss=val_prior, val_prior_accuracy=val_prior_accuracy)

    # --- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: the learner's readers need ``model``, ``config`` and ``counters``."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "config": self.config.to_dict(),
                "counters": {"step": self.step, "epoch": self.epoch, "policy_version": 0,
                             "batches": self.batches, "batch_in_epoch": self.batch_in_epoch,
                             "seconds": self.seconds, "pretrain": True},
                "rng": {"epoch": self.epoch_rng_state, "torch": torch.get_rng_state()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        counters = state["counters"]
        self.step, self.epoch = int(counters["step"]), int(counters["epoch"])
        self.batches, self.batch_in_epoch = int(counters["batches"]), int(counters["batch_in_epoch"])
        self.seconds = float(counters["seconds"])
        self.epoch_rng_state = state["rng"]["epoch"]
        torch.set_rng_state(state["rng"]["torch"])


class PretrainDashboard:
    """A live table of the latest figures on a terminal; plain log lines otherwise."""

    def __init__(self, mode: str, refresh: float, stream: IO[str] | None = None) -> None:
        stream = stream or sys.stdout
        self.rich = mode == "rich" or (mode == "auto" and stream.isatty())
        self.refresh = refresh
        self.live: Live | None = None
        self.console = Console(file=stream)
        self.last: PretrainReport | None = None
        self.trainer: Pretrainer | None = None
        self.printed = 0.0

    def __enter__(self) -> PretrainDashboard:
        if self.rich:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def tick(self, trainer: Pretrainer, rate: float) -> None:
        self.trainer = trainer
        now = time.monotonic()
        if now - self.printed < self.refresh:
            return
        self.printed = now
        if self.live is not None:
            self.live.update(self.render(rate))
        else:
            policy, value, accuracy = trainer.running.means()
            logger.info("position %d (epoch %.2f): train policy loss %.3f, value loss %.3f, "
                        "top-1 %.3f, %.0f positions/s", trainer.step,
                        trainer.batches / trainer.batches_per_epoch, policy, value, accuracy, rate)

    def __call__(self, report: PretrainReport) -> None:
        self.last = report
        if self.live is not None:
            self.live.update(self.render(report.positions_per_second))
        logger.info("validation at position %d (epoch %.2f): policy loss %.3f, value loss %.3f, "
                    "top-1 %.3f on %d held-out positions; train top-1 %.3f; %.0f positions/s",
                    report.step, report.epoch, report.val_policy_loss, report.val_value_loss,
                    report.val_accuracy, report.val_positions, report.train_accuracy,
                    report.positions_per_second)
        if math.isfinite(report.val_prior_loss):
            logger.info("prior head on the held-out positions: loss %.3f, top-1 %.3f",
                        report.val_prior_loss, report.val_prior_accuracy)

    def render(self, rate: float = math.nan) -> Table:
        table = Table(title="keisei-pretrain", show_header=True)
        table.add_column("")
        table.add_column("policy loss", justify="right")
        table.add_column("value loss", justify="right")
        table.add_column("top-1", justify="right")
        if self.trainer is not None:
            policy, value, accuracy = self.trainer.running.means()
            table.add_row(f"train (pos {self.trainer.step}, {rate:.0f}/s)", f"{policy:.3f}",
                          f"{value:.3f}", f"{accuracy:.3f}")
        if self.last is not None:
            last = self.last
            table.add_row(f"held out (epoch {last.epoch:.2f})", f"{last.val_policy_loss:.3f}",
                          f"{last.val_value_loss:.3f}", f"{last.val_accuracy:.3f}")
            if math.isfinite(last.val_prior_loss):
                table.add_row("  prior head, held out", f"{last.val_prior_loss:.3f}", "",
                              f"{last.val_prior_accuracy:.3f}")
        return table


# --- the command ---------------------------------------------------------------------------
SECTIONS = ("run", "model", "pretrain", "checkpoint", "display")
"""The configuration sections keisei-pretrain reads (``--set`` into another is refused)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-pretrain", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a Keisei network on game records (supervised), as a start for "
                    "keisei-learner --init-from.",
        epilog="examples:\n"
               "  keisei-pretrain records/fsf-d4 --set run.dir=runs/pre --set model.blocks=4 \\\n"
               "      --set model.channels=48 --set pretrain.minutes=10 --set pretrain.epochs=100\n"
               "  keisei-pretrain --resume --set run.dir=runs/pre\n"
               "  keisei-pretrain records/more --init-from runs/pre --set run.dir=runs/pre2 \\\n"
               "      --set model.blocks=4 --set model.channels=48\n\n"
               f"settings it reads: [{'], ['.join(SECTIONS)}] (keisei-pretrain --help-config "
               "lists them; every key: docs/configuration.md)")
    parser.add_argument("--help-config", action=HelpConfig, sections=SECTIONS,
                        help="list the settings keisei-pretrain reads, and exit")
    parser.add_argument("records", nargs="*", metavar="RECORDS",
                        help="CSA/KIF/USI files, folders and .zip/.tar.gz archives")
    parser.add_argument("--config", metavar="FILE.toml", default=os.environ.get("KEISEI_CONFIG"))
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override one key (repeatable)")
    parser.add_argument("--data", metavar="DIR",
                        help="the prepared data set (default run.dir/data); made from RECORDS "
                             "when it holds none, reused as it is when it does")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start the network from this checkpoint's weights (a run folder: "
                             "its newest), with a fresh optimizer and schedule; [model] must "
                             "describe its network")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in run.dir from its newest checkpoint")
    return add_version(parser)


def resolve(args: argparse.Namespace) -> tuple[Config, Path, Path]:
    """The config, run folder and data folder; checks what must be checked before work.

    :raises ConfigError: naming the problem.
    """
    check_sections(args.overrides, SECTIONS, "keisei-pretrain")
    config = load_config(args.config, args.overrides)
    run_dir = Path(config.run.dir)
    if args.resume:
        config = load_saved_config(args.config, args.overrides, run_dir)
    check_run_directory(run_dir, args.resume)
    data = Path(args.data) if args.data else run_dir / "data"
    if not (data / "dataset.json").is_file() and not args.records:
        raise ConfigError([f"{data} holds no data set: name the records to read (files, "
                           "folders, .zip/.tar.gz archives)"])
    return config, run_dir, data


def open_data(config: Config, data: Path, records: Sequence[str]) -> tuple[ShardSet, ShardSet]:
    """The training and validation shards, preparing them from ``records`` if needed."""
    settings = config.pretrain
    if (data / "dataset.json").is_file():
        summary = read_summary(data)
        if records:
            logger.info("%s already holds a data set (from %s); the records named are not read "
                        "again", data, ", ".join(summary.sources))
    else:
        logger.info("reading %s into %s", ", ".join(records), data)
        summary = prepare_dataset(records, data, val_fraction=settings.val_fraction,
                                  max_duplicates=settings.max_duplicates,
                                  shard_size=settings.shard_size)
    logger.info("data set: %s", summary.line())
    return ShardSet(data, "train"), ShardSet(data, "val")


def resume(trainer: Pretrainer, run_dir: Path) -> None:
    """Load the newest checkpoint that loads.

    :raises ConfigError: if none does, or its network differs from the config's.
    """
    checkpoints = check_run_directory(run_dir, resume=True)
    checkpoint, state = load_newest(checkpoints, trainer.config)
    trainer.load_state_dict(state)
    logger.info("resumed from %s at position %d (epoch %d, batch %d)", checkpoint,
                trainer.step, trainer.epoch, trainer.batch_in_epoch)


def init_from(trainer: Pretrainer, path: str, state: dict[str, Any]) -> None:
    """Load the weights of the network in ``state`` (``load_start``'s, from ``path``).

    :raises CheckpointError: if they do not load into the network.
    """
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not load: {exc}") from exc
    logger.info("starting from the network in %s (trained %s positions or steps)", path,
                state.get("counters", {}).get("step", "?"))


def run(trainer: Pretrainer, metrics: MetricsWriter, dashboard: PretrainDashboard,
        save: Any) -> None:
    """Epochs until done; validate, write metrics and a checkpoint at each point."""
    validate_every = trainer.config.pretrain.validate_every
    next_validation = (trainer.step // validate_every + 1) * validate_every if validate_every else None
    rate_start, rate_step = time.perf_counter(), trainer.step

    def checkpoint_here() -> None:
        nonlocal rate_start, rate_step
        now = time.perf_counter()
        rate = (trainer.step - rate_step) / max(now - rate_start, 1e-9)
        report = trainer.report(trainer.validate(), rate)
        metrics(report)
        dashboard(report)
        save()
        rate_start, rate_step = time.perf_counter(), trainer.step

    if trainer.step == 0:  # the untrained network's figures: the baseline of the curve
        checkpoint_here()
    while not trainer.finished():
        for samples in trainer.epoch_batches():
            trainer.train_batch(samples)
            elapsed = time.perf_counter() - rate_start
            dashboard.tick(trainer, (trainer.step - rate_step) / max(elapsed, 1e-9))
            if trainer.finished():
                break
            if next_validation is not None and trainer.step >= next_validation:
                next_validation += validate_every
                checkpoint_here()
        if trainer.batch_in_epoch >= trainer.batches_per_epoch:
            trainer.next_epoch()
        checkpoint_here()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config, run_dir, data = resolve(args)
    except ConfigError as exc:
        print(f"keisei-pretrain: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    on_tty = config.display.mode == "rich" or (config.display.mode == "auto" and sys.stdout.isatty())
    setup_logging(RichHandler(show_path=False) if on_tty else None)  # lines above the live table
    torch.set_num_threads(config.run.threads or os.cpu_count() or 1)
    stop = threading.Event()
    try:
        # the start network is checked before the records are read
        start = load_start(args.init_from, config) if args.init_from and not args.resume else None
        train_set, val_set = open_data(config, data, args.records)
        trainer = Pretrainer(config, train_set, val_set, stop)
        if args.resume:
            resume(trainer, run_dir)
            if args.init_from:
                logger.info("--init-from %s: not used, the resumed run continues from its own "
                            "checkpoint", args.init_from)
        elif start is not None:
            init_from(trainer, args.init_from, start)
    except (CheckpointError, ConfigError, DatasetError, FileNotFoundError, OSError) as exc:
        print(f"keisei-pretrain: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        print(f"keisei-pretrain: interrupted while reading the records; {data} is incomplete "
              "and is read again from the start next time", file=sys.stderr)
        return ExitCode.INTERRUPTED
    RunDir(run_dir).checkpoints.mkdir(parents=True, exist_ok=True)
    write_text_atomically(RunDir(run_dir).config, config.to_toml())
    logger.info("pre-training %s parameters on %d positions (%d held out), %d batches of %d per "
                "epoch, %d epochs%s, %d torch threads", f"{count_parameters(trainer.model):,}",
                len(train_set), len(val_set), trainer.batches_per_epoch, config.pretrain.batch_size,
                config.pretrain.epochs,
                f", at most {config.pretrain.minutes:g} min" if config.pretrain.minutes else "",
                torch.get_num_threads())
    writer = CheckpointWriter(RunDir(run_dir).checkpoints, config.checkpoint.keep)

    def save() -> None:
        path = writer.save(trainer.step, trainer.state_dict)
        if path is not None:
            logger.info("checkpoint %s", path)

    code = ExitCode.SUCCESS
    with (MetricsWriter(RunDir(run_dir).metrics, RunDir(run_dir).tensorboard) as metrics,
          PretrainDashboard(config.display.mode, config.display.refresh_seconds) as dashboard,
          stop_on_signals(stop)):
        try:
            run(trainer, metrics, dashboard, save)
        except PretrainInterrupted as exc:
            logger.warning("%s", exc)
            code = ExitCode.INTERRUPTED
        except (DatasetError, FloatingPointError, OSError) as exc:
            logger.error("pre-training failed: %s", exc)
            code = ExitCode.FAILURE
        finally:
            try:
                save()
            except OSError as exc:
                logger.error("the final checkpoint could not be written: %s", exc)
                code = ExitCode.FAILURE
    if code == ExitCode.SUCCESS:
        print(f"pre-trained {trainer.step} positions ({trainer.batches / trainer.batches_per_epoch:.2f} "
              "epochs) in "
              f"{trainer.seconds:.0f} s; checkpoints in {run_dir / 'checkpoints'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
