"""Does watching training in a browser slow it? Training steps/s with two browsers open on
the web view against none, in one run.

One ``keisei-learner --web`` process trains (the README demo's configuration, ``make
run``'s: two local actors by default, or in-process with ``--local-actors 0``, where the
live board follows the game being played ply by ply). The run alternates windows of
``--window`` seconds with no page open and with two headless Chromium browsers (Debian's
``chromium``, through Playwright) on the page, ``--pairs`` times, and reports the steps/s
of each window from ``metrics.jsonl`` (the steps trained between the last epoch before
the window and the last epoch in it, over the time between them), then the ratio of the
browsers' mean to the mean without, and each pair's ratio with their median. The first
window (warm-up) is not counted. Run it on an otherwise idle machine: another load that
changes during the run moves whole windows.

Usage: python -m bench.web [--window 60] [--pairs 3] [--local-actors 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from keisei.rundir import RunDir


def last_epoch(run_dir: Path) -> tuple[int, float] | None:
    path = RunDir(run_dir).metrics
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return None
    record = json.loads(lines[-1])
    return int(record["step"]), float(record["time"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument("--pairs", type=int, default=3, help="(none, two browsers) window pairs")
    parser.add_argument("--local-actors", type=int, default=2)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                        dest="overrides", help="override a key of configs/quick.toml (repeatable; "
                        "e.g. train.steps_per_epoch=512 for more epochs in a window)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        run_dir, port = Path(folder) / "run", free_port()
        command = [sys.executable, "-m", "learner.main", "--config", "configs/quick.toml",
                   "--set", f"run.dir={run_dir}", "--set", "train.total_steps=100000000",
                   "--set", "display.mode=plain", "--set", "evaluation.every_epochs=0",
                   "--local-actors", str(args.local_actors), "--web", f"127.0.0.1:{port}"]
        for override in args.overrides:
            command += ["--set", override]
        learner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results: dict[str, list[float]] = {"none": [], "two browsers": []}
        try:
            deadline = time.monotonic() + 300
            while last_epoch(run_dir) is None:
                if learner.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench.web: the learner did not train an epoch")
                time.sleep(0.5)
            with sync_playwright() as playwright:
                windows = ["warm-up"] + ["none", "two browsers"] * args.pairs
                for index, window in enumerate(windows):
                    browsers: list[Any] = []
                    if window == "two browsers":
                        for _ in range(2):
                            browser = playwright.chromium.launch(
                                executable_path=args.chromium, headless=True,
                                args=["--no-sandbox", "--disable-gpu"])
                            page = browser.new_page(viewport={"width": 1400, "height": 1000})
                            page.goto(f"http://127.0.0.1:{port}/")
                            browsers.append(browser)
                    start = last_epoch(run_dir)
                    time.sleep(args.window)
                    end = last_epoch(run_dir)
                    for browser in browsers:
                        browser.close()
                    assert start is not None and end is not None
                    rate = (end[0] - start[0]) / (end[1] - start[1]) if end[1] > start[1] else 0.0
                    print(f"window {index}: {window:<13} {end[0] - start[0]:>7} steps in "
                          f"{end[1] - start[1]:5.1f} s: {rate:7.1f} steps/s", flush=True)
                    if window in results:
                        results[window].append(rate)
        finally:
            learner.terminate()
            try:
                learner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                learner.kill()
    none, watched = statistics.mean(results["none"]), statistics.mean(results["two browsers"])
    if min(results["none"] + results["two browsers"]) == 0:
        raise SystemExit("bench.web: a window trained no epoch; use a longer --window")
    spread = (f" (windows without: {', '.join(f'{r:.0f}' for r in results['none'])}; with: "
              f"{', '.join(f'{r:.0f}' for r in results['two browsers'])})")
    print(f"steps/s: none {none:.1f}, two browsers {watched:.1f}: ratio {watched / none:.3f}{spread}")
    # each pair's ratio (a window with browsers against the one just before it without):
    # a load that changes during the run moves the means, but shows here as one odd pair
    pairs = [with_ / without for without, with_ in zip(results["none"], results["two browsers"],
                                                         strict=True)]
    print(f"pair ratios: {', '.join(f'{ratio:.3f}' for ratio in pairs)}; median "
          f"{statistics.median(pairs):.3f}")


if __name__ == "__main__":
    main()
