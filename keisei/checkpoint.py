"""Checkpoints that survive crashes and old formats.

A checkpoint is one ``torch.save`` file holding plain data and tensors only, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary unpickling). It is written
to a temporary file in the same directory, fsynced, then ``os.replace``d into place,
and the directory is fsynced, so a crash leaves either the old or the new file, never
half of one. The last ``keep`` are kept. ``FORMAT_VERSION`` is stored; older formats
are brought forward by the functions in ``_MIGRATIONS``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from keisei.errors import KeiseiError
from keisei.files import write_atomically

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{12})\.pt$")


class CheckpointError(KeiseiError, ValueError):
    """A checkpoint file is missing, unreadable, from an unknown format, or incomplete."""


_REQUIRED = ("format_version", "model", "config", "counters")
# format_version -> function that upgrades a checkpoint dict by one version.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


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


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Atomically write ``state`` as the checkpoint for ``step``; remove all but the last ``keep``."""
    folder = Path(directory)
    target = _save_atomically(folder / checkpoint_name(step), state)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def save_policy(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write just the network of ``state`` (model, config, counters): a small
    file that loads like a checkpoint wherever only the policy is needed (evaluation,
    ``keisei-usi``), but cannot resume training."""
    return _save_atomically(Path(path), {key: state[key] for key in ("model", "config", "counters")})


def _save_atomically(target: Path, state: dict[str, Any]) -> Path:
    payload = {"format_version": FORMAT_VERSION, **state}
    return write_atomically(target, lambda stream: torch.save(payload, stream))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and migrate it to ``FORMAT_VERSION``.

    :raises CheckpointError: naming the file and what is wrong with it.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: not a readable Keisei checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a Keisei checkpoint (holds {type(state).__name__})")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is not one this Keisei reads "
                              f"(1..{FORMAT_VERSION})")
    while version < FORMAT_VERSION:
        state = _MIGRATIONS[version](state)
        version = state["format_version"]
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    checked: dict[str, Any] = state
    return checked
