"""The learner as one object: the composition root of everything a run needs.

``Learner(config, options)`` is a context manager. Entering it checks the run directory
(a new run never overwrites another; ``options.resume`` continues the latest
checkpoint), builds the trainer (which owns the buffer, the in-process collector and
the policy version), and, when actors are wanted, the server, the local actor processes
and the supervisor (which owns the collection mode), then the metrics files, the
dashboard and the ratings. Leaving it tears them down in reverse order, whatever
happened. ``run()`` trains until ``train.total_steps`` and always writes a final
checkpoint. The ``keisei-learner`` command, the tests and the benchmarks all build the
learner this way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from keisei.checkpoint import CheckpointError
from keisei.config import CheckpointConfig, Config, ConfigError
from keisei.files import write_atomically, write_json_atomically, write_text_atomically
from keisei.kifu import to_csa, to_kif, write_game_files
from keisei.metrics import MetricsWriter, WandbLogger
from keisei.model import count_parameters
from keisei.protocol import DEFAULT_BIND, load_keys
from keisei.runs import CheckpointWriter, RunDir, check_run_directory, load_newest, load_start
from keisei.selfplay import WatchedGame
from learner.actors import ActorState, ActorTable
from learner.dashboard import Dashboard
from learner.fields import FIELDS, tensorboard_layout
from learner.local_actors import LocalActors
from learner.ranks import (
    Alone,
    RankFailed,
    World,
    checkpoint_state,
    deal_start,
    gather_epoch,
    rank_bind,
    resume_shares,
)
from learner.ratings import Ratings
from learner.reports import REPORTED_ACTORS, ActorsReport, EpochReport, Ledger, Mode
from learner.server import LearnerServer, local_endpoint, weights_bind_address
from learner.supervisor import Supervisor
from learner.trainer import Callback, Trainer, TrainingInterrupted, call_callback, train
from learner.view.address import parse_address
from learner.view.games import LiveGame
from learner.view.run_files import ratings_rows
from learner.view.server import WebView

logger = logging.getLogger(__name__)

LIVE_RESULT_SECONDS = 3.0
"""How long the web view's live board keeps an in-process game's end before the next game."""
FINAL_RATING_SECONDS = 300.0
"""At the end of a finished run, how long to wait for a rating job still running."""


@dataclass(frozen=True)
class LearnerOptions:
    """How a run gets its games and where it starts from (the command line's part).

    No actors: the learner plays in-process (sequential). ``local_actors`` N starts N
    ``keisei-actor`` processes here; ``remote_actors`` waits for actors that connect to
    ``bind`` (both may be given). ``curve_keys`` is a ``keisei-keys`` folder.
    """

    local_actors: int = 0
    remote_actors: bool = False
    bind: str = DEFAULT_BIND
    curve_keys: str | None = None
    resume: bool = False
    init_from: str | None = None
    """A checkpoint (``keisei-pretrain``'s or a learner's) whose network a new run starts from."""
    threads: int | None = None  # torch CPU threads; default run.threads, or all cores
    threads_chosen: bool = False
    """``run.threads`` was chosen for the user (the cores a generator beside the learner
    leaves, ``--beside-workers``), not set by them: local actors may still share them."""
    publish_interval: float = 2.0  # seconds between repeats of the current weights
    web: str | None = None
    """``[HOST:]PORT`` to serve the web view of the run on (``learner.web``); None: no web view."""

    @property
    def distributed(self) -> bool:
        return self.local_actors > 0 or self.remote_actors

    def check(self) -> None:
        """:raises ConfigError: naming every bad option."""
        problems = []
        if self.local_actors < 0:
            problems.append(f"--local-actors {self.local_actors}: must be 0 or more")
        try:
            weights_bind_address(self.bind)
        except ValueError as exc:
            problems.append(str(exc))
        if self.web is not None:
            try:
                parse_address(self.web)
            except ValueError as exc:
                problems.append(f"--web: {exc}")
        if problems:
            raise ConfigError(problems)


class RunOutcome(Enum):
    """How a run ended (a game's end is ``keisei.shogi.Outcome``)."""

    FINISHED = "finished"  # reached train.total_steps
    INTERRUPTED = "interrupted"  # a stop was requested (the checkpoint is written)
    FAILED = "failed"  # an error, logged with its traceback (the checkpoint is written)
    RANK_LOST = "rank-lost"  # another rank of the job left (no checkpoint: see the last one)


class Checkpoints:
    """When to checkpoint: every ``every_epochs`` epochs and at the end, at most once a
    step (``CheckpointWriter`` writes them, keeping the last ``keep``). Each checkpoint
    has the latest finished self-play game beside it, as KIF and CSA in ``games/``."""

    def __init__(self, trainer: Trainer, ratings: Ratings, run: RunDir,
                 config: CheckpointConfig) -> None:
        self.trainer, self.ratings, self.run, self.config = trainer, ratings, run, config
        self.writer = CheckpointWriter(run.checkpoints, config.keep)

    def on_epoch(self) -> None:
        if self.trainer.epoch % self.config.every_epochs == 0:
            self.save()

    def save(self, force: bool = False) -> Path | None:
        """Write a checkpoint unless this step has one (``force``: write it again).

        Every member of the world calls it at the same point: member 0 writes one
        checkpoint holding every shard's waiting steps (``learner.ranks.checkpoint_state``)."""
        trainer = self.trainer
        if trainer.step == self.writer.saved_step and not force:
            return None
        state = checkpoint_state(trainer.world, trainer, lambda: {
            **trainer.state_dict(), "ratings": self.ratings.state_dict()})
        if state is None:  # another member writes it
            self.writer.saved_step = trainer.step
            return None
        path = self.writer.save(trainer.step, state, force=True)
        if path is None:
            return None
        game = trainer.buffer.last_game
        if game is not None:
            record = game.to_game()
            names = (f"Keisei v{int(game.policy_versions[0])}",
                     f"Keisei v{int(game.policy_versions[-1])}")
            write_game_files(self.run.sample_game(trainer.step), to_kif(record, names),
                             to_csa(record, names))
        logger.info("checkpoint %s (step %d, policy version %d)", path, trainer.step,
                    trainer.policy_version)
        return path


class Learner:
    """One training run and everything it owns (see the module docstring)."""

    def __init__(self, config: Config, options: LearnerOptions | None = None,
                 stream: IO[str] | None = None, world: World | None = None) -> None:
        self.config = config
        # the processes training together (``learner.ranks``); a single process is a world of one
        self.world = world = world if world is not None else Alone()
        self.main = world.is_main  # rank 0 owns metrics, ratings, checkpoints
        self.options = options if options is not None else LearnerOptions()
        self.options.check()
        self.stream = stream  # the dashboard's (default: stdout)
        self.rundir = RunDir(Path(config.run.dir))
        self.run_dir = self.rundir.path
        # where this rank's own files go (status.json, the local actors' logs)
        self.rank_dir = self.rundir.rank(world.rank)
        self.stop = threading.Event()  # set it (e.g. from a signal handler) to stop at a safe point
        self.actors = ActorTable()
        self.server: LearnerServer | None = None
        self.local: LocalActors | None = None
        self.supervisor: Supervisor | None = None
        self.web: WebView | None = None
        self._finished_watch: tuple[WatchedGame, float] | None = None
        self.outcome: RunOutcome | None = None  # how ``run`` ended, for the final status
        self.wandb: WandbLogger | None = None  # with run.wandb_project (rank 0)
        self._stack = ExitStack()

    def mode(self) -> Mode:
        """Where games come from now: the supervisor's mode, or sequential without actors."""
        return self.supervisor.mode if self.supervisor is not None else Mode.SEQUENTIAL

    # --- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> Learner:
        try:
            self._open()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()
        if self.outcome is not None:
            self._write_final_status(self.outcome)

    def _open_wandb(self) -> WandbLogger:
        """The W&B logger of ``run.wandb_project``; closed (with the ratings table and the
        final checkpoint as an artifact) when the learner closes.

        :raises ConfigError: if the ``wandb`` package is not installed.
        """
        run = self.config.run
        try:
            logger_ = WandbLogger(self.run_dir, run.wandb_project, run.wandb_entity, run.wandb_mode,
                                  self.config.to_dict(), {field.name: field.unit for field in FIELDS})
        except ImportError as exc:
            raise ConfigError([f"run.wandb_project = {run.wandb_project!r}: the wandb package is "
                               f"not installed ({exc}); pip install 'keisei[wandb]'"]) from exc
        self._stack.callback(self._close_wandb, logger_)
        return logger_

    def _close_wandb(self, wandb: WandbLogger) -> None:
        try:
            if self.ratings.table:
                wandb.ratings(ratings_rows(self.ratings.state_dict()))
            newest = self.rundir.newest_checkpoint()
            if newest is not None and self.outcome is RunOutcome.FINISHED:
                wandb.checkpoint(newest, self.trainer.step)
        except Exception:  # the run's own files are written; W&B is a copy
            logger.exception("W&B: the ratings table or the final checkpoint did not log")
        finally:
            wandb.close()

    def _write_final_status(self, outcome: RunOutcome) -> None:
        """``status.json`` once everything is closed: how the run ended (``state``), when,
        at which step of how many, and its actors all ``stopped`` (but a failed one): the
        learner no longer serves any of them. ``keisei-learner --status`` and the web view
        read it; while the run goes, ``state`` is ``running``."""
        trainer = self.trainer
        status: dict[str, Any] = (self.supervisor.status() if self.supervisor is not None else {
            "pid": os.getpid(), "mode": str(Mode.SEQUENTIAL), "actors": [],
            "ledger": asdict(self.ledger()), "transitions": []})
        for actor in status["actors"]:
            if actor["state"] != str(ActorState.FAILED):
                actor["state"] = str(ActorState.STOPPED)
        status.update(time=time.time(), ended=time.time(), state=outcome.value,
                      step=trainer.step, epoch=trainer.epoch,
                      policy_version=trainer.policy_version,
                      total_steps=self.config.train.total_steps,
                      train_seconds=round(trainer.train_seconds, 1),
                      minutes=self.config.train.minutes)
        try:
            write_json_atomically(self.rank_dir.status, status)
        except OSError as exc:
            logger.error("cannot write the final status %s: %s", self.rank_dir.status, exc)

    def _open(self) -> None:
        config, options, stack = self.config, self.options, self._stack
        resume_from: list[Path] = []
        problem: Exception | None = None
        try:
            if self.main:
                resume_from = check_run_directory(
                    self.rundir, options.resume, resume_hint="pass --resume to continue it "
                    "(--resume auto, or run.resume = \"auto\", to continue whatever is there)")
                self.rundir.checkpoints.mkdir(parents=True, exist_ok=True)
                for partial in self.rundir.checkpoints.glob(".checkpoint-*.tmp"):
                    partial.unlink(missing_ok=True)  # left by a crash during a write
            self.rank_dir.path.mkdir(parents=True, exist_ok=True)
        except (ConfigError, OSError) as exc:
            problem = exc  # said to the other ranks first (``learner.ranks.deal_start``)
        self.trainer = trainer = Trainer.build(config, self.stop, options.threads, self.mode,
                                               self.world)
        evaluation = config.evaluation if self.main else replace(config.evaluation, every_epochs=0)
        self.ratings = Ratings(evaluation, self.run_dir, trainer)
        resume_from = self._start(resume_from, problem)
        if config.train.kl_anchor == "gated" and trainer.reference is None:
            # no start network (random weights) or none in the checkpoint: the weights every
            # member now holds are the first anchor
            trainer.hold_anchor(trainer.model.state_dict())
        anchored = {name: getattr(config.train, name)
                    for name in ("init_kl_coef", "value_anchor_coef") if getattr(config.train, name)}
        if anchored and trainer.reference is None and self.main:
            logger.warning("%s: no anchor to hold the network near, so %s; start from a network "
                           "with --init-from, or set train.kl_anchor = \"gated\"",
                           ", ".join(f"train.{name} = {value:g}" for name, value in anchored.items()),
                           "it is off" if len(anchored) == 1 else "they are off")
        if self.main:
            write_text_atomically(self.rundir.config, config.to_toml())
        logger.info("run %s: %s parameters, %d games in lock-step, device %s, %d torch threads",
                    self.run_dir, f"{count_parameters(trainer.model):,}", config.selfplay.games,
                    trainer.device, torch.get_num_threads())
        counts = trainer.admission.counts()
        self._ledger_start = {"carried": counts.steps_held, "step": trainer.step,
                              "stale": counts.steps_dropped_stale,
                              "non_finite": trainer.steps_dropped_non_finite}
        self.checkpoints = Checkpoints(trainer, self.ratings, self.rundir,
                                       config.checkpoint)
        if options.distributed:
            self._open_distributed()
            if (options.local_actors and options.threads is None
                    and (not config.run.threads or options.threads_chosen)
                    and self.world.size == 1 and trainer.device.type == "cpu"):
                trainer.threads = follow_actors(
                    torch.get_num_threads(), options.local_actors,
                    lambda: self.mode() is Mode.DISTRIBUTED and trainer.admission.accepting())
                logger.info("torch threads follow the %d local actors: %d while they play, "
                            "%d while they pause", options.local_actors, trainer.threads(),
                            torch.get_num_threads())
        if options.web is not None and self.main:  # like the sockets: a port in use leaves no run behind
            self.web = stack.enter_context(WebView(options.web, [self.run_dir], self.live_game))
            trainer.collector.watch = True
        if not resume_from:  # so a crash at any moment from here on leaves a run to resume
            self.checkpoints.save()  # (after the sockets: a start that fails leaves no run)
        self.wandb = self._open_wandb() if self.main and config.run.wandb_project else None
        self.metrics = (stack.enter_context(MetricsWriter(self.rundir.metrics,
                                                          self.rundir.tensorboard,
                                                          tensorboard_layout()))
                        if self.main else None)
        self.dashboard = (stack.enter_context(Dashboard(
            trainer, config.display, self.stream, actors=self.actors if options.distributed else None,
            supervisor=self.supervisor, ratings=self.ratings)) if self.main else None)
        stack.enter_context(self.ratings)

    def _open_distributed(self) -> None:
        """The server (sockets and their thread), then the local actor processes, then the
        supervisor that watches both; undone in reverse order."""
        config, options, trainer = self.config, self.options, self.trainer
        keys = load_keys(options.curve_keys, "learner") if options.curve_keys else None
        bind = rank_bind(options.bind, self.world.rank)
        self.server = self._stack.enter_context(LearnerServer(
            bind, trainer.admission, self.actors, config.to_dict(),
            lambda: trainer.policy_version, keys=keys, publish_interval=options.publish_interval,
            heartbeat_interval=min(1.0, config.supervisor.heartbeat_timeout / 4),
            wire=config.wire, takeover_after=config.supervisor.heartbeat_timeout))
        trainer.weights_out = self.server.publish
        trainer.pool_out = self.server.publish_pool
        trainer.admission.pool_result = trainer.record_pool_game
        for name in ("weights_out", "pool_out"):  # before the server closes
            self._stack.callback(setattr, trainer, name, None)
        trainer.publish(new_version=False)  # version 0, or the resumed one
        if options.local_actors:
            self.local = self._stack.enter_context(LocalActors(
                options.local_actors, local_endpoint(bind), self.rank_dir.actors,
                prefix="local" if self.world.size == 1 else f"rank{self.world.rank}-local"))
        self.supervisor = self._stack.enter_context(Supervisor(
            config.supervisor, trainer, self.server, self.actors, self.local,
            self.rank_dir.status, forget_after=config.wire.forget_after,
            ledger=lambda: asdict(self.ledger())))

    def _start(self, resume_from: list[Path], problem: Exception | None) -> list[Path]:
        """Every member starts from member 0's state (``learner.ranks.deal_start``): a
        resumed checkpoint, an ``--init-from`` network, or member 0's fresh weights.
        Returns the checkpoints resumed from.

        :raises ConfigError: if none loads, the network differs from the config's, or
            (on the other members) naming member 0's problem.
        """
        world, trainer = self.world, self.trainer
        mine = deal_start(world, lambda: self._start_parts(resume_from), problem)
        if "state" in mine:
            state = mine["state"]
            trainer.load_state_dict(state)
            trainer.reseed_rank()
            if world.is_main:
                if "ratings" in state:
                    self.ratings.load_state_dict(state["ratings"])
                logger.info("resumed from %s at step %d, policy version %d",
                            mine["resumed_from"][0], trainer.step, trainer.policy_version)
                self._truncate_metrics(trainer.step)
            else:
                logger.info("rank %d resumed at step %d with %d waiting steps of the checkpoint",
                            world.rank, trainer.step, trainer.buffer.size)
        elif "reference" in mine:
            trainer.set_reference(mine["reference"])
        elif "model" in mine:
            trainer.model.load_state_dict(mine["model"])
        return [Path(name) for name in mine.get("resumed_from", [])]

    def _start_parts(self, resume_from: list[Path]) -> list[dict[str, Any]]:
        """Member 0: what each member starts from (see ``_start``); its own part is
        empty where it already holds it."""
        world, trainer, options = self.world, self.trainer, self.options
        if resume_from:
            if options.init_from:
                logger.info("--init-from %s: not used, the resumed run continues from its own "
                            "checkpoint", options.init_from)
            checkpoint, state = load_newest(resume_from, self.config, map_location="cpu")
            return resume_shares(state, checkpoint, world.size)
        others = world.size - 1
        if options.init_from:
            self._init_from(Path(options.init_from))
            assert trainer.reference is not None
            return [{}] + [{"reference": trainer.reference.state_dict()}] * others
        return [{}] + [{"model": trainer.model.state_dict()}] * others

    def _init_from(self, path: Path) -> None:
        """Start the new run from the network in ``path`` (fresh counters and optimizer).

        :raises CheckpointError: if the file is not a usable checkpoint.
        :raises ConfigError: if its network is not the one ``[model]`` describes.
        """
        state = load_start(path, self.config, map_location=self.trainer.device)
        try:
            self.trainer.set_reference(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: its weights do not load: {exc}") from exc
        train = self.config.train
        penalty = (f"KL penalty {train.init_kl_coef:g}" + (f" falling to 0 at step "
                   f"{train.init_kl_steps}" if train.init_kl_steps else "")
                   if train.init_kl_coef else "no KL penalty (train.init_kl_coef = 0)")
        logger.info("starting from the network in %s; %s", path, penalty)

    def _truncate_metrics(self, step: int) -> None:
        """Drop the metrics lines of epochs after ``step`` (trained after the checkpoint,
        then lost with the crash): they will be trained, and written, again."""
        path = self.rundir.metrics
        if not path.is_file():
            return
        lines = path.read_bytes().splitlines(keepends=True)
        kept = [line for line in lines if _line_step(line) <= step]
        if len(kept) < len(lines):
            logger.info("metrics.jsonl: dropped %d line(s) after step %d", len(lines) - len(kept), step)
            write_atomically(path, lambda stream: stream.writelines(kept))

    # --- training -----------------------------------------------------------------------
    def run(self, until_step: int | None = None, callbacks: Sequence[Callback] = ()) -> RunOutcome:
        """Train until ``until_step`` (default ``train.total_steps``) or a stop; then write a
        checkpoint. ``callbacks`` see each epoch's full report after the learner's own.
        The outcome is also kept (``outcome``) for the final ``status.json``."""
        self.outcome = self._run(until_step, callbacks)
        return self.outcome

    def _run(self, until_step: int | None, callbacks: Sequence[Callback]) -> RunOutcome:
        trainer = self.trainer
        outcome = RunOutcome.FAILED
        try:
            async def on_epoch(report: EpochReport) -> None:
                full = self._on_epoch(report)
                for callback in callbacks:
                    await call_callback(callback, full)

            asyncio.run(train(trainer, [on_epoch], until_step))
            outcome = RunOutcome.FINISHED
            # The final policy's rating goes to ratings.json and the checkpoint; metrics.jsonl
            # keeps exactly one line per epoch.
            rated = self.ratings.finish(timeout=FINAL_RATING_SECONDS) if self.main else False
            rated = bool(self.world.broadcast(rated))
            if rated:
                self.checkpoints.save(force=True)
        except RankFailed as exc:
            # the others are not at the same point any more: no final checkpoint together
            self.world.broken = True
            newest = self.rundir.newest_checkpoint() if self.main else None
            logger.error("%s; the job ends%s", exc, f"; --resume continues from {newest}"
                         if newest is not None else "")
            return RunOutcome.RANK_LOST
        except (TrainingInterrupted, KeyboardInterrupt):
            outcome = RunOutcome.INTERRUPTED
            logger.warning("interrupted at step %d; %d plies of unfinished games discarded",
                           trainer.step, trainer.collector.in_flight_steps())
        except OSError as exc:  # a full disk, a run directory gone: no traceback to read
            logger.error("training stopped at step %d: %s", trainer.step, exc)
        except Exception:
            logger.exception("training failed at step %d", trainer.step)
        if self.world.size > 1 and outcome is RunOutcome.FAILED:
            logger.error("rank %d failed alone: no final checkpoint (the other ranks are not "
                         "at the same point); the last one stays", self.world.rank)
            return outcome
        try:
            self.checkpoints.save()
        except (OSError, RankFailed) as exc:
            newest = self.rundir.newest_checkpoint() if self.main else None
            logger.error("could not write the final checkpoint: %s; --resume continues from %s",
                         exc, newest if newest is not None else "the last checkpoint")
            outcome = RunOutcome.FAILED
            if isinstance(exc, RankFailed):
                self.world.broken = True
                outcome = RunOutcome.RANK_LOST
        return outcome

    def _on_epoch(self, report: EpochReport) -> EpochReport:
        """Complete the epoch's report with the actors', the supervisor's and the ratings'
        parts, then record and show it (the trainer has published the new policy)."""
        full = replace(report, actors=self.actors_report(),
                       supervision=self.supervisor.report() if self.supervisor else None,
                       ratings=self.ratings.on_epoch() if self.main else None, ledger=self.ledger())
        full = gather_epoch(self.world, full, self.trainer, self.config.ranks.checksum_every)
        if self.metrics is not None:
            self.metrics(full)
        if self.wandb is not None:
            self.wandb(full)
        self.checkpoints.on_epoch()
        if self.dashboard is not None:
            self.dashboard(full)
        return full

    def live_game(self) -> LiveGame | None:
        """The web view's live board: the in-process game being played (sequential mode),
        else the latest game delivered. Called from the web server's threads: it only
        reads references that training replaces, and never waits for it."""
        watched = self.trainer.collector.watched
        if watched is not None and self.mode() is Mode.SEQUENTIAL:
            now = time.monotonic()
            if watched.result is not None:
                self._finished_watch = (watched, now)
            elif self._finished_watch is not None and now - self._finished_watch[1] < LIVE_RESULT_SECONDS:
                watched = self._finished_watch[0]  # its end stays on the board a moment
            return LiveGame(f"in-process:{watched.number}", "in-process self-play game",
                            watched.start_sfen, watched.moves, watched.values, watched.movers,
                            watched.result)
        game = self.trainer.buffer.last_game
        if game is None:
            return None
        winner = {0: "black", 1: "white"}.get(int(game.winner))
        result = f"{winner} wins by {game.reason}" if winner else f"draw by {game.reason}"
        versions = f"v{int(game.policy_versions[0])}" if len(game.policy_versions) else ""
        return LiveGame(f"delivered:{id(game)}", f"latest game delivered (policy {versions})",
                        game.start_sfen, tuple(game.moves.tolist()), tuple(game.values.tolist()),
                        tuple(game.players.tolist()), result)

    def ledger(self) -> Ledger:
        """The step ledger (see ``reports.Ledger``); exact between epochs."""
        trainer, start = self.trainer, self._ledger_start
        counts = trainer.admission.counts()
        received = counts.steps_received + counts.steps_invalid + counts.steps_in_process
        dropped = {"backpressure": counts.steps_dropped_backpressure,
                   "stale": counts.steps_dropped_stale - start["stale"],
                   "invalid": counts.steps_invalid,
                   "non_finite": trainer.steps_dropped_non_finite - start["non_finite"]}
        return Ledger(start["carried"], received, trainer.steps_trained_here, dropped,
                      counts.steps_held + counts.steps_pending)

    def actors_report(self) -> ActorsReport | None:
        """The actors' part: counts by state for all, rows for the ``REPORTED_ACTORS`` most
        recently heard (``status.json`` has the whole table, bounded by ``wire.max_actors``)."""
        if self.server is None:
            return None
        now = time.monotonic()
        table = self.actors.snapshot()
        recent = sorted(table, key=lambda info: info.last_seen, reverse=True)[:REPORTED_ACTORS]
        states = {str(state): sum(info.state is state for info in table) for state in ActorState}
        return ActorsReport([info.as_dict(now) for info in recent],
                            sum(info.steps_per_second for info in table),  # all that delivered
                            dict(self.server.counters), states)


def follow_actors(cores: int, actors: int, playing: Callable[[], bool]) -> Callable[[], int]:
    """The learner's torch threads while ``actors`` local actors share its ``cores``: one
    core each is theirs while they play (``playing``: the learner wants data and is not
    collecting in-process), every core is the update's while they pause on back-pressure.
    Two busy threads on one core would make the update several times slower, and a core
    left to paused actors would sit idle."""
    shared = max(1, cores - actors)
    return lambda: shared if playing() else cores


def _line_step(line: bytes) -> int:
    """The step of one ``metrics.jsonl`` line; a torn or unreadable line counts as after
    every step (it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 2**62

