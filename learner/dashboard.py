"""Progress display and metrics files.

``Dashboard`` is a ``rich`` live view refreshed on a time interval (it reads the
trainer's live state, so it moves during long phases too), or plain log lines when
stdout is not a terminal. ``metrics.jsonl`` is written by ``keisei.metrics.MetricsWriter``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict
from types import TracebackType
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from keisei.config import DisplayConfig
from learner.actors import ActorTable
from learner.fields import outside_band
from learner.ratings import Ratings
from learner.reports import EpochReport, UpdateReport
from learner.supervisor import Supervisor
from learner.trainer import Trainer

logger = logging.getLogger(__name__)


def _format(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.{digits}g}"
    return "—" if value is None else str(value)


class Dashboard:
    """Live view of a ``Trainer``; call it with each epoch's report."""

    def __init__(self, trainer: Trainer, config: DisplayConfig, stream: IO[str] | None = None,
                 actors: ActorTable | None = None, supervisor: Supervisor | None = None,
                 ratings: Ratings | None = None) -> None:
        self.trainer = trainer
        self.ratings = ratings
        self.actors = actors
        self.supervisor = supervisor
        self.config = config
        self.stream = stream if stream is not None else sys.stdout
        use_rich = config.mode == "rich" or (config.mode == "auto" and self.stream.isatty())
        self.console = Console(file=self.stream) if use_rich else None
        self.latest: EpochReport | None = None
        self.started = time.monotonic()
        self._last_line = 0.0
        self._live: Live | None = None

    def __enter__(self) -> Dashboard:
        if self.console is not None:
            self._live = Live(get_renderable=self.render, console=self.console,
                              refresh_per_second=1.0 / self.config.refresh_seconds,
                              redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __call__(self, report: EpochReport) -> None:
        self.latest = report
        now = time.monotonic()
        if self.console is None and now - self._last_line >= self.config.refresh_seconds:
            self._last_line = now
            logger.info(self.summary_line(report))

    @staticmethod
    def summary_line(report: EpochReport) -> str:
        """The plain-log line of an epoch (the actors' rate is what they delivered, as in
        the metrics: ``learner.actors``)."""
        update, games, collect = report.update, report.games, report.collect
        rating = report.ratings.new_rating if report.ratings is not None else None
        finished = (f"games {games.games} len {games.mean_game_length:.0f} "
                    f"B/W/D {games.black_win_rate:.2f}/{games.white_win_rate:.2f}/"
                    f"{games.draw_rate:.2f}" if games.games else "no game finished")
        actors = ""
        if report.actors is not None:
            rate = report.actors.actor_steps_per_second
            delivering = report.actors.actor_states.get("healthy", 0)
            actors = f" | actors {delivering} healthy, {rate:.0f} steps/s delivered"
        return (f"epoch {report.epoch} step {report.step} v{report.policy_version} "
                f"[{report.mode}] {report.steps_per_second:.0f} steps/s | "
                f"policy {_format(update.policy_loss)} value {_format(update.value_loss)} "
                f"entropy {_format(update.entropy)} kl {_format(update.exact_kl)} (sampled {_format(update.approx_kl)}) | "
                f"{finished} | collect {collect.collect_seconds:.1f}s "
                f"update {update.update_seconds:.1f}s" + _terms_text(update) + actors
                + _pool_text(report)
                + (f" | Elo {rating.elo:+.0f} (step {rating.elo_step}, random = 0)"
                   if rating is not None else "") + _health_text(report))

    def render(self) -> Group:
        trainer, report = self.trainer, self.latest
        total, minutes = trainer.config.train.total_steps, trainer.config.train.minutes
        phase = "update" if trainer.processing else "collect"
        done = 100 * max(trainer.step / total,
                         trainer.train_seconds / (60 * minutes) if minutes else 0.0)
        header = Text.assemble(
            ("Keisei learner  ", "bold"), (f"mode {trainer.mode()}  ", "cyan"),
            f"step {trainer.step:,}/{total:,} ({done:.1f}%)  " if not minutes else
            f"step {trainer.step:,}, {trainer.train_seconds / 60:.1f} of {minutes:g} min "
            f"({min(done, 100.0):.1f}%)  ",
            f"epoch {trainer.epoch}  policy v{trainer.policy_version}  ",
            f"phase {phase}  buffer {trainer.buffer.size:,}/{trainer.buffer.steps_per_epoch:,}  ",
            f"elapsed {time.monotonic() - self.started:.0f}s")
        parts: list[Table | Text] = [header]
        if self.supervisor is not None and self.supervisor.transitions:
            last = self.supervisor.transitions[-1]
            parts.append(Text(f"mode changes {len(self.supervisor.transitions)}; last: "
                              f"{time.strftime('%H:%M:%S', time.localtime(last.time))} -> {last.mode}: "
                              f"{last.cause}", style="yellow"))
        parts.append(self.render_epoch(report))
        if report is not None and (terms := report.update.extra_terms()):
            parts.append(Text("beyond PPO: " + ", ".join(terms)))  # the loss terms that are on
        if report is not None and (health := _health_text(report)):
            parts.append(Text(health.lstrip(" |"), style="bold red"))
        if self.actors is not None and (actors := self.actors.snapshot()):
            now = time.monotonic()
            actor_table = Table("actor", "state", "steps/s", "policy", "games", "steps", "invalid",
                                "heard", header_style="bold")
            for info in actors:
                actor_table.add_row(info.actor_id, str(info.state), f"{info.steps_per_second:.0f}",
                                    f"v{info.policy_version}", str(info.games_received),
                                    f"{info.steps_received:,}", str(info.invalid_messages),
                                    f"{now - info.last_seen:.1f}s ago")
            parts.append(actor_table)
        if self.ratings is not None and (ratings := self.render_ratings()) is not None:
            parts.append(ratings)
        return Group(*parts)

    @staticmethod
    def render_epoch(report: EpochReport | None) -> Table | Text:
        """The last epoch's figures."""
        if report is None:
            return Text("first epoch in progress", style="dim")
        collect, update, games = report.collect, report.update, report.games
        table = Table("throughput", "time per phase", "losses", "games", header_style="bold")
        rows = [
            (f"{_format(report.steps_per_second)} steps/s",
             f"collect {_format(collect.collect_seconds, 3)} s",
             f"policy {_format(update.policy_loss)}", f"finished {games.games}"),
            (f"lag mean {_format(update.policy_lag_mean, 3)}",
             f"inference {_format(collect.inference_seconds, 3)} s",
             f"value {_format(update.value_loss)}",
             f"mean length {_format(games.mean_game_length, 4)}"),
            (f"lag max {update.policy_lag_max}",
             f"rules+encode {_format(collect.rules_seconds + collect.encode_seconds, 3)} s",
             f"entropy {_format(update.entropy)}", f"black {_format(games.black_win_rate, 3)}"),
            (f"stale dropped {report.steps_dropped_stale}",
             f"update {_format(update.update_seconds, 3)} s",
             f"kl {_format(update.exact_kl)} ({_format(update.approx_kl)}) clip {_format(update.clipfrac)}",
             f"white {_format(games.white_win_rate, 3)}"),
            ("", f"passes {update.ppo_passes}", f"expl. var {_format(update.explained_variance)}",
             f"draw {_format(games.draw_rate, 3)}"),
            ("", "", f"lr {_format(update.learning_rate)}", _pool_text(report).lstrip(" |")),
        ]
        for row in rows:
            table.add_row(*row)
        return table

    def render_ratings(self) -> Table | Text | None:
        """The Elo table: the baselines and the last rated policies, newest first."""
        ratings = self.ratings
        assert ratings is not None
        job = ratings.job
        running = (f"rating {job.name}: {time.monotonic() - job.started:.0f} s" if job is not None
                   else "")
        if not ratings.table:
            return Text(running or "ratings: none yet", style="dim")
        table = Table("rated (random = 0)", "Elo", "vs random", "vs greedy", header_style="bold",
                      caption=running or None)
        latest = ratings.latest
        for name, step in reversed(ratings.rated[-5:]):
            scores = latest.get("scores", {}) if latest.get("name") == name else {}
            table.add_row(f"{name} ({step:,} steps)", f"{ratings.table.get(name, math.nan):+.0f}",
                          _format(scores.get("random"), 3), _format(scores.get("greedy"), 3))
        table.add_row("greedy", f"{ratings.table.get('greedy', math.nan):+.0f}", "", "")
        return table


def _health_text(report: EpochReport) -> str:
    """`` | outside the healthy band: ...`` when the update's figures left the band a
    healthy run stays in (``learner.fields``), else nothing."""
    outside = outside_band(asdict(report.update))
    return f" | outside the healthy band: {', '.join(outside)}" if outside else ""


def _terms_text(update: UpdateReport) -> str:
    """`` | search 2.088 on 514, ...``: the loss terms beyond PPO's that are on, else
    nothing."""
    terms = update.extra_terms()
    return f" | {', '.join(terms)}" if terms else ""


def _pool_text(report: EpochReport) -> str:
    """`` | pool N: score S in G games`` with an opponent pool (nothing without one)."""
    pool = report.pool
    if pool is None:
        return ""
    score = f"score {_format(pool.score, 3)} in {pool.games} games" if pool.games else "no game"
    return f" | pool {pool.size}: {score}"
