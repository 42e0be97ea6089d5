"""``metrics.jsonl`` (and TensorBoard scalars): one JSON object per report, for every
command that trains (``keisei-learner``, ``keisei-pretrain``)."""

from __future__ import annotations

import importlib
import json
import logging
import math
import secrets
from pathlib import Path
from typing import IO, Any, Protocol

logger = logging.getLogger(__name__)


class JsonReport(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class MetricsWriter:
    """Appends each epoch's metrics as one JSON line (flushed, so a crash keeps them), and
    writes their numeric fields as TensorBoard scalars under ``tensorboard_dir`` when the
    ``tensorboard`` package is installed; ``layout`` (custom scalars: section → chart title
    → ``["Multiline", [names]]``) groups them into charts."""

    def __init__(self, path: str | Path, tensorboard_dir: str | Path | None = None,
                 layout: dict[str, dict[str, list[Any]]] | None = None) -> None:
        self.path = Path(path)
        self._stream: IO[str] | None = open(self.path, "a", encoding="utf-8")
        self._tensorboard: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("TensorBoard scalars off: pip install tensorboard to get them")
            else:
                self._tensorboard = SummaryWriter(str(tensorboard_dir))
                if layout:  # TensorBoard's custom-scalars tab: the charts, grouped
                    self._tensorboard.add_custom_scalars(layout)
                logger.info("TensorBoard scalars in %s (tensorboard --logdir %s)", tensorboard_dir,
                            tensorboard_dir)

    def __call__(self, report: JsonReport) -> None:
        if self._stream is None:
            raise RuntimeError(f"MetricsWriter for {self.path} is closed")
        metrics = report.to_json()
        self._stream.write(json.dumps(metrics, sort_keys=True) + "\n")
        self._stream.flush()
        if self._tensorboard is not None:
            self._write_scalars(metrics)

    def _write_scalars(self, metrics: dict[str, Any]) -> None:
        step = int(metrics.get("step", 0))
        for key, value in metrics.items():
            if key in ("step", "elo", "elo_step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, step)
        if isinstance(metrics.get("elo"), int | float):
            self._tensorboard.add_scalar("elo", metrics["elo"], int(metrics.get("elo_step", step)))
        self._tensorboard.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WANDB_ID_FILE = "wandb-id"
"""The file in a run directory that keeps its W&B run id, so a resume logs to the same run."""


class WandbLogger:
    """Logs each report's numeric fields to Weights & Biases (``run.wandb_project``), with
    ``step`` as the x axis; the configuration and each field's unit (``units``) go into
    the run's config. The run id is kept in ``RUN_DIR/wandb-id``: a resumed run continues
    the same W&B run. ``wandb`` is imported only here (the ``wandb`` extra).

    :raises ImportError: if the ``wandb`` package is not installed.
    """

    def __init__(self, run_dir: Path, project: str, entity: str, mode: str,
                 config: dict[str, Any], units: dict[str, str]) -> None:
        wandb: Any = importlib.import_module("wandb")  # the optional extra, untyped here
        self._wandb = wandb
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        self.run: Any = wandb.init(project=project, entity=entity or None, name=run_dir.name,
                              id=run_id, resume="allow", mode=mode, dir=str(run_dir),
                              config={**config, "metric_units": units})
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        logger.info("W&B run %s (project %s, %s)", run_id, project, mode)

    def __call__(self, report: JsonReport) -> None:
        metrics = report.to_json()
        logged = {key: value for key, value in metrics.items()
                  if isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value)}
        self.run.log(logged)

    def ratings(self, rows: list[dict[str, Any]]) -> None:
        """The rating table (player, step, Elo, ± its 95% interval, games) as a W&B table."""
        columns = ["player", "step", "elo", "interval_95", "games"]
        table = self._wandb.Table(columns=columns, data=[
            [row.get("name"), row.get("step"), row.get("elo"), row.get("interval"),
             row.get("games")] for row in rows])
        self.run.log({"ratings": table})

    def checkpoint(self, path: Path, step: int) -> None:
        """The final checkpoint as a model artifact."""
        artifact = self._wandb.Artifact(f"{self.run.name}-model", type="model",
                                        metadata={"step": step})
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        self.run.finish()
