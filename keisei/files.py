"""Writing files so that a crash leaves either the old file or the new one, never half.

``write_atomically`` is the one way Keisei replaces a file it owns (checkpoints,
``config.toml``, ``status.json``, ``ratings.json``, evaluation results): the content goes
to a temporary file in the same directory, is flushed and fsynced, renamed over the
target with ``os.replace``, and the directory is fsynced so the rename itself survives
a power cut. The temporary file is removed if writing fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(target: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Replace ``target`` with what ``write`` puts into the stream it is given."""
    target = Path(target)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return target


def write_text_atomically(target: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return write_atomically(target, lambda stream: stream.write(text.encode(encoding)))


def write_json_atomically(target: str | Path, value: Any) -> Path:
    """``value`` as indented JSON, with a final newline."""
    return write_text_atomically(target, json.dumps(value, indent=1) + "\n")
