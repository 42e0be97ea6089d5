"""The files of a run directory, by name, without torch: ``RunDir`` (what ``--status``,
``keisei-web`` and ``keisei-plot`` read, and where the learner writes), and the
checkpoint files' names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = re.compile(r"^checkpoint-(\d{12})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:012d}.pt"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (fewest steps) first."""
    path = Path(directory)
    if not path.is_dir():
        return []
    return sorted(item for item in path.iterdir() if _NAME.match(item.name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None



@dataclass(frozen=True)
class RunDir:
    """The files of one run, by name: the one place that knows them.

    ``config.toml`` (the run's effective configuration), ``metrics.jsonl`` (one line per
    epoch) and ``tensorboard/``, ``status.json`` (the learner's mode and actors, each
    second while it runs), ``checkpoints/checkpoint-<step>.pt``, ``games/game-<step>``
    (a sample self-play game per checkpoint, ``.kif`` and ``.csa``), ``ratings.json`` and
    ``ratings/`` (the rating jobs and their games), ``actors/`` (the local actors' logs),
    ``ranks/rank-<r>/`` (what a rank other than 0 keeps of its own).
    """

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def games(self) -> Path:
        return self.path / "games"

    @property
    def ratings(self) -> Path:
        return self.path / "ratings.json"

    @property
    def rating_jobs(self) -> Path:
        """One folder per rating job: ``results.json``, ``log.txt`` and its games."""
        return self.path / "ratings"

    @property
    def actors(self) -> Path:
        return self.path / "actors"

    def rank(self, rank: int) -> RunDir:
        """Where rank ``rank`` keeps its own files (its status, its local actors' logs):
        rank 0 keeps them in the run directory itself."""
        return self if rank == 0 else RunDir(self.path / "ranks" / f"rank-{rank}")

    def holds_run(self) -> bool:
        """Whether a run is here (what a new run refuses to overwrite): a checkpoint or
        a metrics file."""
        return bool(self.list_checkpoints()) or self.metrics.exists()

    def list_checkpoints(self) -> list[Path]:
        """The checkpoints, oldest first."""
        return list_checkpoints(self.checkpoints)

    def newest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def sample_game(self, step: int) -> Path:
        """The stem of the sample game written with the checkpoint of ``step``."""
        return self.games / f"game-{step:012d}"

    def sample_games(self) -> list[Path]:
        """The sample games' CSA files, oldest first."""
        return sorted(self.games.glob("game-*.csa"))

    def rating_games(self) -> list[Path]:
        """The rating jobs' CSA files."""
        return sorted(self.rating_jobs.glob("jobs/*/*/*.csa"))
