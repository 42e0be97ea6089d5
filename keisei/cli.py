"""What Keisei's commands share on the command line: exit codes, log set-up and stopping
on signals (the commands that train), and ``--version`` (every command)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import IntEnum
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130


def setup_logging(handler: logging.Handler | None = None) -> None:
    """Log INFO and above through ``handler`` (a live display's, which keeps log lines
    above it), or as plain timestamped lines on stderr."""
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM request a stop at the next safe point; a second SIGINT aborts at once."""
    def request_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logger.warning("received %s: stopping after the current step, then checkpointing",
                       signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--version``: Keisei's version (the installed package's), with torch's and cshogi's."""
    parser.add_argument("--version", action="version", version=version_line(parser.prog))
    return parser


def version_line(prog: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    return f"{prog} (Keisei) {of('keisei')}; torch {of('torch')}, cshogi {of('cshogi')}, Python {sys.version.split()[0]}"


class HelpConfig(argparse.Action):
    """``--help-config``: print the settings of the configuration ``sections`` a command
    reads (name, type, default, range, meaning) and exit."""

    def __init__(self, option_strings: Sequence[str], dest: str, sections: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.sections = sections

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from keisei.config import Config

        print(f"settings {parser.prog} reads (in the TOML file of --config, or --set SECTION.KEY=VALUE):")
        print(Config.describe(self.sections))
        parser.exit()
