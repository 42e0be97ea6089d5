"""A run directory, as every command uses it: ``RunDir`` knows its paths, whether a
folder holds a run, its newest checkpoint, its sample games and its ratings; then the
check before a run starts (``keisei-learner``, ``keisei-pretrain``), the resume from the
newest checkpoint that loads, the device and precision check, and checkpoints written
at most once per step."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from keisei.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from keisei.config import Config, ConfigError, saved_model_settings
from keisei.model import resolve_precision
from keisei.rundir import RunDir

__all__ = ["CheckpointWriter", "RunDir", "check_run_directory", "load_newest", "load_start",
           "resolve_device"]

logger = logging.getLogger(__name__)


def check_run_directory(run_dir: Path | RunDir, resume: bool,
                        resume_hint: str = "pass --resume to continue it") -> list[Path]:
    """The checkpoints to resume from, newest first (none for a new run).

    :raises ConfigError: if a new run would overwrite an existing one (``resume_hint``
        says how to continue it instead), or a resume finds no checkpoint.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    checkpoints = run.list_checkpoints()[::-1]
    if resume:
        if not checkpoints:
            raise ConfigError([f"--resume: no checkpoint in {run.checkpoints}"])
        return checkpoints
    if run.holds_run():
        raise ConfigError([f"run.dir = {str(run.path)!r} already holds a run; {resume_hint}, "
                           "or choose another run.dir"])
    return []


def load_newest(checkpoints: Sequence[Path], config: Config,
                map_location: torch.device | str = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest of ``checkpoints`` (newest first) that loads, and its state; each one
    skipped is logged with the reason.

    :raises ConfigError: if none loads (naming why each did not), or the network it holds
        is not the one ``config.model`` describes (a resumed run keeps its network).
    """
    skipped = []
    for checkpoint in checkpoints:
        try:
            state = load_checkpoint(checkpoint, map_location=map_location)
            break
        except CheckpointError as exc:
            logger.warning("skipping checkpoint %s", exc)
            skipped.append(str(exc))
    else:
        raise ConfigError(["--resume: no checkpoint loads", *skipped])
    saved_model, model = saved_model_settings(state["config"]["model"]), config.to_dict()["model"]
    if saved_model != model:
        raise ConfigError([f"[model] {model} differs from {checkpoint}'s {saved_model}; a "
                           "resumed run keeps its network"])
    return checkpoint, state


def load_start(path: Path | str, config: Config,
               map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """The state of the checkpoint (or a run folder's newest) that a new run starts its
    network from (``keisei-learner --init-from``, ``keisei-pretrain --init-from``).

    :raises CheckpointError: if the file is not a usable checkpoint.
    :raises ConfigError: if its network is not the one ``config.model`` describes, naming
        each setting that differs.
    """
    state = load_checkpoint(path, map_location=map_location)
    try:
        saved_model = saved_model_settings(state["config"]["model"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: holds no network configuration ({exc})") from exc
    model = config.to_dict()["model"]
    if model["prior_head"] and not saved_model["prior_head"]:
        saved_model["prior_head"] = True  # the prior head starts as a copy of the policy head
    if saved_model != model:
        differences = ", ".join(f"model.{key} = {model.get(key)} here but {saved_model.get(key)}"
                                for key in sorted(set(model) | set(saved_model))
                                if model.get(key) != saved_model.get(key))
        raise ConfigError([f"--init-from {path}: its network differs from [model] "
                           f"({differences}); set [model] to the checkpoint's"])
    return state


def resolve_device(config: Config) -> tuple[torch.device, torch.dtype | None]:
    """``run.device`` and the autocast type ``run.precision`` gives on it.

    :raises ConfigError: if the device or the precision cannot be used here.
    """
    device = torch.device(config.run.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"run.device = {config.run.device!r}: CUDA is not available here"])
    try:
        return device, resolve_precision(config.run.precision, device)
    except ValueError as exc:
        raise ConfigError([f"run.precision = {config.run.precision!r}: {exc}"]) from exc


class CheckpointWriter:
    """Writes a run's checkpoints into ``directory``, keeping the last ``keep``, at most
    once per step: asking again at the same step writes nothing unless forced."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self.saved_step = -1

    def save(self, step: int, state: Callable[[], dict[str, Any]], force: bool = False) -> Path | None:
        """Write ``state()`` as the checkpoint of ``step``; return its path, or None when
        this step has one already (and ``force`` is false)."""
        if step == self.saved_step and not force:
            return None
        path = save_checkpoint(self.directory, step, state(), self.keep)
        self.saved_step = step
        return path
