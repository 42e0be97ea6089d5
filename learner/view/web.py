"""``keisei-web RUN_DIR…``: the web view of finished or running runs, without a learner."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from keisei.cli import ExitCode, add_version, setup_logging
from keisei.rundir import RunDir
from learner.view.address import DEFAULT_HOST, DEFAULT_PORT, parse_address
from learner.view.server import WebView


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-web",
        description="Serve the web view of runs from their directories alone (finished or "
                    "running; no learner needed).")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to show")
    parser.add_argument("--address", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}", metavar="[HOST:]PORT",
                        help=f"where to listen (default {DEFAULT_HOST}:{DEFAULT_PORT}; a host "
                             "beyond loopback exposes the runs, read-only, to the network)")
    return add_version(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = []
    for run_dir in args.run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            problems.append(f"{run_dir}: not a directory")
        elif not RunDir(path).holds_run():
            problems.append(f"{run_dir}: holds no run (no metrics.jsonl or checkpoint)")
    try:
        parse_address(args.address)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"keisei-web: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    setup_logging()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with WebView(args.address, [Path(path) for path in args.run_dirs]) as web:
            print(f"keisei-web: serving {len(args.run_dirs)} run(s) at {web.url} (Ctrl-C stops)",
                  flush=True)
            while not stop.wait(0.5):
                pass
    except OSError as exc:
        print(f"keisei-web: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
