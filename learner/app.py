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
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from keisei.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from keisei.config import CheckpointConfig, Config, ConfigError
from keisei.files import write_atomically, write_text_atomically
from keisei.kifu import to_csa, to_kif
from keisei.metrics import MetricsWriter
from keisei.model import count_parameters
from keisei.protocol import DEFAULT_BIND, load_keys
from keisei.runs import CheckpointWriter, check_run_directory, load_newest
from keisei.selfplay import WatchedGame
from learner.actors import ActorState, ActorTable
from learner.dashboard import Dashboard
from learner.local_actors import LocalActors
from learner.ranks import (
    RankFailed,
    Ranks,
    merge_shards,
    rank_bind,
    split_buffer,
    weights_checksum,
)
from learner.ratings import Ratings
from learner.reports import ActorsReport, EpochReport, Ledger, Mode, RanksReport
from learner.server import LearnerServer, local_endpoint, weights_bind_address
from learner.supervisor import Supervisor
from learner.trainer import Callback, Trainer, TrainingInterrupted, call_callback, train
from learner.web import LiveGame, WebView, parse_address

logger = logging.getLogger(__name__)

REPORTED_ACTORS = 32
"""Actor rows in each metrics line (the most recently heard); the rest are only counted."""
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
    """Checkpoints every ``every_epochs`` epochs (keeping the last ``keep``), each with the
    latest finished self-play game beside it as KIF and CSA in ``games/``."""

    def __init__(self, trainer: Trainer, ratings: Ratings, directory: Path,
                 config: CheckpointConfig) -> None:
        self.trainer, self.ratings, self.directory, self.config = trainer, ratings, directory, config
        self.writer = CheckpointWriter(directory, config.keep)

    def on_epoch(self) -> None:
        if self.trainer.epoch % self.config.every_epochs == 0:
            self.save()

    def save(self, force: bool = False) -> Path | None:
        """Write a checkpoint unless this step has one (``force``: write it again).

        With ranks every rank calls it at the same point: rank 0 gathers every shard's
        waiting steps and writes one checkpoint holding them all."""
        trainer, ranks = self.trainer, self.trainer.ranks
        if trainer.step == self.writer.saved_step and not force:
            return None
        def state() -> dict[str, Any]:
            return {**trainer.state_dict(), "ratings": self.ratings.state_dict()}

        if ranks is not None:
            shards = ranks.all_gather(trainer.shard_state())
            if not ranks.is_main:
                self.writer.saved_step = trainer.step
                return None
            merged = merge_shards(shards)
            own = state

            def state() -> dict[str, Any]:
                full = own()
                counters = {**full["counters"], "sources": merged["sources"],
                            "games": sum(shard["games"] for shard in shards),
                            "steps_dropped_stale": sum(shard["stale"] for shard in shards),
                            "steps_dropped_non_finite": sum(shard["non_finite"] for shard in shards)}
                return {**full, "buffer": merged["buffer"], "counters": counters,
                        "ranks": ranks.world}
        path = self.writer.save(trainer.step, state, force=True)
        if path is None:
            return None
        self._write_sample_game()
        logger.info("checkpoint %s (step %d, policy version %d)", path, trainer.step,
                    trainer.policy_version)
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
        stem.with_suffix(".kif").write_text(to_kif(record, names), encoding="cp932")
        stem.with_suffix(".csa").write_text(to_csa(record, names), encoding="utf-8")


class Learner:
    """One training run and everything it owns (see the module docstring)."""

    def __init__(self, config: Config, options: LearnerOptions | None = None,
                 stream: IO[str] | None = None, ranks: Ranks | None = None) -> None:
        self.config = config
        self.ranks = ranks  # one rank of a multi-rank learner (``learner.ranks``); None: alone
        self.main = ranks is None or ranks.is_main  # rank 0 owns metrics, ratings, checkpoints
        self.options = options if options is not None else LearnerOptions()
        self.options.check()
        self.stream = stream  # the dashboard's (default: stdout)
        self.run_dir = Path(config.run.dir)
        # where this rank's own files go (status.json, the local actors' logs)
        self.rank_dir = (self.run_dir if ranks is None or ranks.is_main
                         else self.run_dir / "ranks" / f"rank-{ranks.rank}")
        self.stop = threading.Event()  # set it (e.g. from a signal handler) to stop at a safe point
        self.actors = ActorTable()
        self.server: LearnerServer | None = None
        self.local: LocalActors | None = None
        self.supervisor: Supervisor | None = None
        self.web: WebView | None = None
        self._finished_watch: tuple[WatchedGame, float] | None = None
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

    def _open(self) -> None:
        config, options, stack = self.config, self.options, self._stack
        resume_from: list[Path] = []
        problem: Exception | None = None
        try:
            if self.main:
                resume_from = check_run_directory(
                    self.run_dir, options.resume, resume_hint="pass --resume to continue it "
                    "(--resume auto, or run.resume = \"auto\", to continue whatever is there)")
                (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                for partial in (self.run_dir / "checkpoints").glob(".checkpoint-*.tmp"):
                    partial.unlink(missing_ok=True)  # left by a crash during a write
            self.rank_dir.mkdir(parents=True, exist_ok=True)
        except (ConfigError, OSError) as exc:
            if self.ranks is None:
                raise
            problem = exc  # said to the other ranks first (``_start_ranks``)
        # Local actors take one thread each, but they pause as soon as the next epoch is
        # buffered (back-pressure in the heartbeat ack), so they and the PPO update take
        # turns on the cores rather than share them: the learner keeps every core.
        self.trainer = trainer = Trainer.build(config, self.stop, options.threads, self.mode,
                                               self.ranks)
        evaluation = config.evaluation if self.main else replace(config.evaluation, every_epochs=0)
        self.ratings = Ratings(evaluation, self.run_dir, trainer)
        if self.ranks is not None:
            resume_from = self._start_ranks(resume_from, problem)
        elif resume_from:
            if options.init_from:
                logger.info("--init-from %s: not used, the resumed run continues from its own "
                            "checkpoint", options.init_from)
            self._resume(resume_from)
        elif options.init_from:
            self._init_from(Path(options.init_from))
        if self.main:
            write_text_atomically(self.run_dir / "config.toml", config.to_toml())
        logger.info("run %s: %s parameters, %d games in lock-step, device %s, %d torch threads",
                    self.run_dir, f"{count_parameters(trainer.model):,}", config.selfplay.games,
                    trainer.device, torch.get_num_threads())
        counts = trainer.admission.counts()
        self._ledger_start = {"carried": counts.steps_held, "step": trainer.step,
                              "stale": counts.steps_dropped_stale,
                              "non_finite": trainer.steps_dropped_non_finite}
        self.checkpoints = Checkpoints(trainer, self.ratings, self.run_dir / "checkpoints",
                                       config.checkpoint)
        if options.distributed:
            self._open_distributed()
        if options.web is not None and self.main:  # like the sockets: a port in use leaves no run behind
            self.web = stack.enter_context(WebView(options.web, [self.run_dir], self.live_game))
            trainer.collector.watch = True
        if not resume_from:  # so a crash at any moment from here on leaves a run to resume
            self.checkpoints.save()  # (after the sockets: a start that fails leaves no run)
        self.metrics = (stack.enter_context(MetricsWriter(self.run_dir / "metrics.jsonl",
                                                          self.run_dir / "tensorboard"))
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
        bind = rank_bind(options.bind, self.ranks.rank) if self.ranks is not None else options.bind
        self.server = self._stack.enter_context(LearnerServer(
            bind, trainer.admission, self.actors, config.to_dict(),
            lambda: trainer.policy_version, keys=keys, publish_interval=options.publish_interval,
            heartbeat_interval=min(1.0, config.supervisor.heartbeat_timeout / 4),
            wire=config.wire, takeover_after=config.supervisor.heartbeat_timeout))
        trainer.weights_out = self.server.publish
        self._stack.callback(setattr, trainer, "weights_out", None)  # before the server closes
        trainer.publish(new_version=False)  # version 0, or the resumed one
        if options.local_actors:
            self.local = self._stack.enter_context(LocalActors(
                options.local_actors, local_endpoint(bind), self.rank_dir / "actors",
                prefix="local" if self.ranks is None else f"rank{self.ranks.rank}-local"))
        self.supervisor = self._stack.enter_context(Supervisor(
            config.supervisor, trainer, self.server, self.actors, self.local,
            self.rank_dir / "status.json", forget_after=config.wire.forget_after,
            ledger=lambda: asdict(self.ledger())))

    def _start_ranks(self, resume_from: list[Path], problem: Exception | None) -> list[Path]:
        """Every rank starts from rank 0's state: a resumed checkpoint (its waiting steps
        dealt out in equal shares, whatever number of ranks wrote it), an ``--init-from``
        network, or rank 0's fresh weights. A problem on rank 0 ends every rank.

        :raises ConfigError: naming rank 0's problem.
        """
        ranks, trainer = self.ranks, self.trainer
        assert ranks is not None
        parts: list[dict[str, Any]] | None = None
        if ranks.is_main:
            try:
                if problem is not None:
                    raise problem
                parts = self._rank_states(resume_from)
            except (ConfigError, CheckpointError, OSError) as exc:
                ranks.scatter([{"problem": str(exc)}] * ranks.world)
                raise
        mine = ranks.scatter(parts)
        if "problem" in mine:
            raise ConfigError([f"rank 0 could not start the run: {mine['problem']}"])
        if problem is not None:  # this rank's own (its directory), now that rank 0 knows
            raise problem
        if "state" in mine:
            trainer.load_state_dict(mine["state"])
            if ranks.is_main and "ratings" in mine["state"]:
                self.ratings.load_state_dict(mine["state"]["ratings"])
            trainer.reseed_rank()
            logger.info("rank %d resumed at step %d with %d waiting steps of the checkpoint",
                        ranks.rank, trainer.step, trainer.buffer.size)
            if ranks.is_main:
                self._truncate_metrics(trainer.step)
        elif "reference" in mine:
            if not ranks.is_main:
                trainer.set_reference(mine["reference"])
        else:
            trainer.model.load_state_dict(mine["model"])
        return [Path(name) for name in mine.get("resumed_from", [])]

    def _rank_states(self, resume_from: list[Path]) -> list[dict[str, Any]]:
        """Rank 0: what each rank starts from (see ``_start_ranks``)."""
        ranks, trainer, options = self.ranks, self.trainer, self.options
        assert ranks is not None
        if resume_from:
            checkpoint, state = load_newest(resume_from, self.config, map_location="cpu")
            saved = int(state.get("ranks", 1))
            logger.info("resuming %s (written by %d rank%s) on %d ranks: %d waiting steps dealt "
                        "out in equal shares", checkpoint, saved, "s" * (saved != 1), ranks.world,
                        len(state["buffer"].get("actions", ())))
            shares = split_buffer(state["buffer"], ranks.world)
            states = []
            for rank, share in enumerate(shares):
                counters = dict(state["counters"])
                if rank:  # the run's totals stay with rank 0
                    counters.update(games=0, steps_dropped_stale=0, steps_dropped_non_finite=0)
                own = {**state, "buffer": share, "counters": counters}
                if rank:
                    own.pop("ratings", None)
                states.append({"state": own, "resumed_from": [str(checkpoint)]})
            return states
        if options.init_from:
            self._init_from(Path(options.init_from))
            assert trainer.reference is not None
            return [{"reference": trainer.reference.state_dict()}] * ranks.world
        return [{"model": trainer.model.state_dict()}] * ranks.world

    def _resume(self, checkpoints: list[Path]) -> None:
        """Continue from the newest checkpoint that loads (saying which were skipped and
        why), and cut ``metrics.jsonl`` back to the epochs it includes.

        :raises ConfigError: if none loads, or the network differs from the config's.
        """
        trainer = self.trainer
        checkpoint, state = load_newest(checkpoints, self.config, map_location=trainer.device)
        trainer.load_state_dict(state)
        if "ratings" in state:
            self.ratings.load_state_dict(state["ratings"])
        logger.info("resumed from %s at step %d, policy version %d", checkpoint, trainer.step,
                    trainer.policy_version)
        self._truncate_metrics(trainer.step)

    def _init_from(self, path: Path) -> None:
        """Start the new run from the network in ``path`` (fresh counters and optimizer).

        :raises CheckpointError: if the file is not a usable checkpoint.
        :raises ConfigError: if its network is not the one ``[model]`` describes.
        """
        state = load_checkpoint(path, map_location=self.trainer.device)
        try:
            saved_model = dict(state["config"]["model"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: holds no network configuration ({exc})") from exc
        model = self.config.to_dict()["model"]
        if saved_model != model:
            differences = ", ".join(f"model.{key} = {model.get(key)} here but {saved_model.get(key)}"
                                    for key in sorted(set(model) | set(saved_model))
                                    if model.get(key) != saved_model.get(key))
            raise ConfigError([f"--init-from {path}: its network differs from [model] "
                               f"({differences}); set [model] to the checkpoint's"])
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
        path = self.run_dir / "metrics.jsonl"
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
        checkpoint. ``callbacks`` see each epoch's full report after the learner's own."""
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
            if self.ranks is not None:
                rated = bool(self.ranks.broadcast(rated))
            if rated:
                self.checkpoints.save(force=True)
        except RankFailed as exc:
            # the others are not at the same point any more: no final checkpoint together
            if self.ranks is not None:
                self.ranks.broken = True
            newest = latest_checkpoint(self.run_dir / "checkpoints") if self.main else None
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
        if self.ranks is not None and outcome is RunOutcome.FAILED:
            logger.error("rank %d failed alone: no final checkpoint (the other ranks are not "
                         "at the same point); the last one stays", self.ranks.rank)
            return outcome
        try:
            self.checkpoints.save()
        except (OSError, RankFailed) as exc:
            newest = latest_checkpoint(self.run_dir / "checkpoints") if self.main else None
            logger.error("could not write the final checkpoint: %s; --resume continues from %s",
                         exc, newest if newest is not None else "the last checkpoint")
            outcome = RunOutcome.FAILED
            if isinstance(exc, RankFailed) and self.ranks is not None:
                self.ranks.broken = True
                outcome = RunOutcome.RANK_LOST
        return outcome

    def _on_epoch(self, report: EpochReport) -> EpochReport:
        """Complete the epoch's report with the actors', the supervisor's and the ratings'
        parts, then record and show it (the trainer has published the new policy)."""
        full = replace(report, actors=self.actors_report(),
                       supervision=self.supervisor.report() if self.supervisor else None,
                       ratings=self.ratings.on_epoch() if self.main else None, ledger=self.ledger())
        if self.ranks is not None:
            full = self._gather_ranks(full)
        if self.metrics is not None:
            self.metrics(full)
        self.checkpoints.on_epoch()
        if self.dashboard is not None:
            self.dashboard(full)
        return full

    def _gather_ranks(self, report: EpochReport) -> EpochReport:
        """Every rank's part of the epoch in rank 0's report: the ledger per rank and in
        total, the actors of all ranks, and (every ``ranks.checksum_every`` epochs) a
        checksum of each rank's weights. Weights that differ are logged and replaced by
        rank 0's on every rank."""
        ranks, trainer = self.ranks, self.trainer
        assert ranks is not None
        every = self.config.ranks.checksum_every
        checksum = weights_checksum(trainer.model) if every and trainer.epoch % every == 0 else None
        parts = ranks.all_gather({"ledger": report.ledger, "actors": report.actors,
                                  "mode": str(report.mode), "checksum": checksum})
        agree = None
        if checksum is not None:
            agree = len({part["checksum"] for part in parts}) == 1
            if not agree:
                logger.error("epoch %d: the ranks' weights differ (checksums %s); every rank "
                             "takes rank 0's", trainer.epoch,
                             ", ".join(f"rank {rank} {part['checksum']}" for rank, part in enumerate(parts)))
                state = ranks.broadcast({"model": trainer.model.state_dict(),
                                         "optimizer": trainer.optimizer.state_dict()})
                trainer.model.load_state_dict(state["model"])
                trainer.optimizer.load_state_dict(state["optimizer"])
        ledgers = [part["ledger"] for part in parts]
        total = Ledger(sum(item.carried for item in ledgers), sum(item.received for item in ledgers),
                       sum(item.trained for item in ledgers),
                       {reason: sum(item.dropped[reason] for item in ledgers) for reason in ledgers[0].dropped},
                       sum(item.waiting for item in ledgers))
        rows = [{**row, "rank": rank} for rank, part in enumerate(parts) if part["actors"] is not None
                for row in part["actors"].actors]
        actors = report.actors
        reported = [part["actors"] for part in parts if part["actors"] is not None]
        if reported:
            actors = ActorsReport(
                sorted(rows, key=lambda row: float(row["seconds_since_heard"]))[:REPORTED_ACTORS],
                sum(item.actor_steps_per_second for item in reported),
                _sum_counts(item.wire for item in reported),
                _sum_counts(item.actor_states for item in reported))
        return replace(report, ledger=total, actors=actors, ranks=RanksReport(
            ranks.world, ledgers, [part["mode"] for part in parts], checksum, agree))

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
                            sum(info.steps_per_second for info in table
                                if info.state in (ActorState.HEALTHY, ActorState.STARTING)),
                            dict(self.server.counters), states)


def _line_step(line: bytes) -> int:
    """The step of one ``metrics.jsonl`` line; a torn or unreadable line counts as after
    every step (it is dropped)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 2**62


def _sum_counts(parts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, count in part.items():
            total[name] = total.get(name, 0) + int(count)
    return total
