"""``metrics.jsonl`` (and TensorBoard scalars): one JSON object per report, for every
command that trains (``keisei-learner``, ``keisei-pretrain``)."""

from __future__ import annotations

import json
import logging
import math
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
