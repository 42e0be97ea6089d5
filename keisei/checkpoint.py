"""Checkpoints that survive crashes and old formats.

A checkpoint is one ``torch.save`` file holding plain data and tensors only, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary unpickling). It is written
to a temporary file in the same directory, fsynced, then ``os.replace``d into place,
and the directory is fsynced, so a crash leaves either the old or the new file, never
half of one. The last ``keep`` are kept. ``FORMAT_VERSION`` is stored; older formats
are brought forward by the functions in ``_MIGRATIONS``.

Every tensor's bytes are summed into a SHA-256 ``checksum`` stored with them, and the
network's weights must be finite: a file damaged on disk (a flipped bit, a truncation)
fails to load with a ``CheckpointError`` saying so, instead of loading NaN weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from keisei.errors import KeiseiError
from keisei.files import write_atomically
from keisei.rundir import checkpoint_name, latest_checkpoint, list_checkpoints

__all__ = ["FORMAT_VERSION", "CheckpointError", "checkpoint_name", "checksum", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "save_checkpoint", "save_policy"]

FORMAT_VERSION = 2


class CheckpointError(KeiseiError, ValueError):
    """A checkpoint file is missing, unreadable, from an unknown format, or incomplete."""


_REQUIRED = ("format_version", "model", "config", "counters")
# format_version -> function that upgrades a checkpoint dict by one version.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: lambda state: {**state, "format_version": 2},  # version 1 had no checksum
}


def checksum(value: Any) -> str:
    """SHA-256 over every tensor in ``value`` (nested dicts, lists and tuples), with the
    keys that lead to them, in a fixed order."""
    digest = hashlib.sha256()

    def visit(item: Any, path: str) -> None:
        if isinstance(item, torch.Tensor):
            digest.update(path.encode())
            tensor = item.detach().cpu()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
                tensor = tensor.float()
            digest.update(tensor.numpy().tobytes())
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                visit(item[key], f"{path}/{key}")
        elif isinstance(item, list | tuple):
            for index, element in enumerate(item):
                visit(element, f"{path}/{index}")

    visit(value, "")
    return digest.hexdigest()


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
    payload = {"format_version": FORMAT_VERSION, **state, "checksum": checksum(state)}
    return write_atomically(target, lambda stream: torch.save(payload, stream))


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or, for a run directory, its newest checkpoint: every command that
    takes a checkpoint takes a run folder too.

    :raises CheckpointError: for a run directory without a checkpoint yet.
    """
    from keisei.rundir import RunDir

    target = Path(path)
    if target.is_dir():
        newest = RunDir(target).newest_checkpoint()
        if newest is None:
            raise CheckpointError(f"{target}: a directory without a checkpoint (a run "
                                  "directory's checkpoints/ is empty or missing)")
        return newest
    return target


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) and migrate it to ``FORMAT_VERSION``.
    ``path`` may be a run directory: its newest checkpoint (``resolve_checkpoint``).

    :raises CheckpointError: naming the file and what is wrong with it.
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint") from exc
    except Exception as exc:  # unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable Keisei checkpoint ({reason})") from exc
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
    stored = state.pop("checksum", None)
    if stored is not None and stored != checksum(state):
        raise CheckpointError(f"{path}: damaged (its tensors do not match their checksum)")
    weights = state["model"].values() if isinstance(state["model"], dict) else []
    if any(isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
           and not bool(torch.isfinite(tensor).all()) for tensor in weights):
        raise CheckpointError(f"{path}: damaged (its network holds non-finite weights)")
    checked: dict[str, Any] = state
    return checked
