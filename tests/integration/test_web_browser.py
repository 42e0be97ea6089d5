"""The web view in a real browser: a tiny training run with ``--web``, watched in headless
Chromium (Debian's ``chromium``, driven by Playwright). Skips, saying why, where there is
no browser. Screenshots go to ``$KEISEI_SCREENSHOTS`` when it is set (else the test's
temporary folder)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import learner_command, metrics_lines

from keisei.kifu import to_csa
from keisei.shogi import play_random_game

CHROMIUM = os.environ.get("KEISEI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
        except Exception as exc:  # a browser that cannot start here
            pytest.skip(f"{CHROMIUM} does not start headless: {exc}")
        try:
            yield browser
        finally:
            browser.close()


def japanese_fonts() -> bool:
    """Whether fontconfig knows a font with Japanese (else the page draws letters)."""
    try:
        listed = subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return bool(listed.stdout.strip())


def screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: ``$KEISEI_SCREENSHOTS``, else the test's folder."""
    shots = Path(os.environ.get("KEISEI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def reap(process: subprocess.Popen[str]) -> None:
    """Stop a server the test started, and wait for it (killed if it will not stop)."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def served_run(run_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).parent / "keisei-web"), str(run_dir),
                             "--address", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def open_page(page: Any, url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while True:  # until keisei-web listens
        try:
            page.goto(url, timeout=10_000)
            return
        except Exception:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "keisei-web did not answer within 30 s"
            time.sleep(0.3)


def number(page: Any, selector: str, attribute: str) -> int:
    return int(page.get_attribute(selector, attribute) or 0)


def until(condition: Any, timeout: float, what: str) -> None:
    """Poll from Python (the page's Content-Security-Policy forbids evaluated strings, so
    Playwright's ``wait_for_function`` cannot run in it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def test_a_training_run_watched_in_a_browser(tmp_path: Path, browser: Any) -> None:
    shots = screenshots(tmp_path)
    run_dir, port = tmp_path / "run", free_port()
    command = [*learner_command(run_dir, "train.total_steps=1000000", "selfplay.max_plies=96",
                                "train.steps_per_epoch=256"), "--web", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(metrics_lines(run_dir)) < 1:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "no epoch within 120 s"
            time.sleep(0.2)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
        page.wait_for_selector("#connection.live", timeout=30_000)

        # the board follows the in-process game: it advances while training runs
        until(lambda: number(page, "#board", "data-plies") > 0, 30, "a game on the board")
        first = (page.get_attribute("#board", "data-game"), number(page, "#board", "data-plies"))
        until(lambda: (page.get_attribute("#board", "data-game"),
                       number(page, "#board", "data-plies")) != first, 30, "the board to advance")
        assert page.locator("#board .cell").count() == 81
        # (a new game may have just started: wait for its first move)
        until(lambda: page.locator("#move-list li").count() >= 1, 30, "a move in the move list")
        until(lambda: number(page, "#value-chart", "data-points") >= 1, 30,
              "the value head's evaluation over the game")

        # the curves gain points while training runs
        chart = "canvas[data-title='policy loss']"
        until(lambda: number(page, chart, "data-points") >= 1, 30, "a point on the curves")
        before = number(page, chart, "data-points")
        until(lambda: number(page, chart, "data-points") > before, 60, "the curves to gain points")
        assert "step" in page.inner_text("#overview")
        page.screenshot(path=str(shots / "web-live.png"), full_page=True)

        # a finished game (the sample game written with each checkpoint) replays move by move
        until(lambda: page.locator("#game-list li[data-path]").count() > 0, 60, "a finished game listed")
        path = page.locator("#game-list li[data-path]").first.get_attribute("data-path")
        page.locator("#game-list li[data-path]").first.click()
        until(lambda: page.get_attribute("#board", "data-game") == path, 10, "the game on the board")
        assert number(page, "#board", "data-ply") == 0
        plies = number(page, "#board", "data-plies")
        assert plies > 0
        page.click("#forward")
        page.click("#forward")
        assert number(page, "#board", "data-ply") == 2
        page.click("#back")
        assert number(page, "#board", "data-ply") == 1
        page.click("#last")
        assert number(page, "#board", "data-ply") == plies
        assert page.locator("#move-list li.current").count() == 1
        page.screenshot(path=str(shots / "web-replay.png"), full_page=True)
        assert not errors, errors
    finally:
        reap(process)


def test_a_finished_run_reads_finished_in_a_browser(tmp_path: Path, browser: Any) -> None:
    shots = screenshots(tmp_path)
    run_dir, port = tmp_path / "run", free_port()
    trained = subprocess.run(learner_command(run_dir, "train.total_steps=256", "selfplay.max_plies=96",
                                             "train.steps_per_epoch=128"),
                             capture_output=True, text=True, timeout=180)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    process = served_run(run_dir, port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_page(page, f"http://127.0.0.1:{port}/", process)
        page.wait_for_selector("#connection.ended", timeout=30_000)
        assert page.inner_text("#connection") == "finished"  # not "live"
        assert not page.is_visible("#live-button")
        board = page.inner_text("#board")
        if not japanese_fonts():  # letters, not empty boxes
            assert "P" in board and "K" in board and "歩" not in board, board
        else:
            assert "歩" in board, board
        # the newest game stands at its end: shown, not replayed
        until(lambda: number(page, "#board", "data-plies") > 0, 30, "the newest game on the board")
        plies = number(page, "#board", "data-plies")
        assert number(page, "#board", "data-ply") == plies
        time.sleep(1.0)
        assert number(page, "#board", "data-ply") == plies
        overview = page.inner_text("#overview")
        assert "finished" in overview and "ended" in overview and "256 / 256" in overview
        page.screenshot(path=str(shots / "web-finished.png"), full_page=True)
        assert not errors, errors
    finally:
        reap(process)


def is_1_2_5(values: list[float]) -> bool:
    """Evenly spaced by 1, 2 or 5 times a power of ten."""
    steps = {round(b - a, 9) for a, b in zip(values[:-1], values[1:], strict=True)}
    if len(steps) != 1:
        return False
    mantissa = f"{steps.pop():.6e}".split("e")[0].rstrip("0").rstrip(".")
    return mantissa in ("1", "2", "5")


def test_charts_read_at_a_glance(tmp_path: Path, browser: Any) -> None:
    shots = screenshots(tmp_path)
    run_dir, port = tmp_path / "run", free_port()
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("[train]\ntotal_steps = 100000\n")
    lines = []
    for epoch in range(1, 41):
        lines.append(json.dumps({
            "step": 2048 * epoch, "epoch": epoch, "time": 1000.0 + 30 * epoch, "mode": "sequential",
            "policy_loss": 0.0142 - 0.002 * epoch, "value_loss": 0.1, "entropy": 3.0,
            "clipfrac": 0.02 + 0.001 * epoch, "exact_kl": 0.001 * 1.3 ** epoch,
            "approx_kl": 0.002 * 1.4 ** epoch, "steps_per_second": 150.0 + epoch,
            "search_loss": None}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for index in range(3):  # sample games, and a rating's games against greedy
        record = to_csa(play_random_game(seed=index, max_plies=40), ("Keisei v1", "Keisei v2"))
        (run_dir / "games").mkdir(exist_ok=True)
        (run_dir / "games" / f"game-{2048 * (index + 1):012d}.csa").write_text(record)
    jobs = run_dir / "ratings" / "jobs" / "step-000000002048" / "greedy"
    jobs.mkdir(parents=True)
    for index in range(30):
        names = ("step-000000002048", "greedy")[::1 if index % 2 == 0 else -1]
        record = to_csa(play_random_game(seed=100 + index, max_plies=60), names)
        (jobs / f"{index:04d}-{names[0]}-vs-{names[1]}.csa").write_text(record)
    actor = {"actor_id": "rank0-local-0", "host": "a-rather-long-host-name.example", "state": "stopped",
             "steps_per_second": 1234.5, "policy_version": 40, "games_received": 12345,
             "restarts": 0, "steps_dropped": 0, "seconds_since_heard": 0.2}
    (run_dir / "status.json").write_text(json.dumps({
        "time": 1.0, "ended": 1.0, "state": "finished", "mode": "distributed", "step": 81920,
        "epoch": 40, "policy_version": 40, "total_steps": 100000, "pid": 1,
        "actors": [actor, {**actor, "actor_id": "rank0-local-1"}], "transitions": []}))
    process = served_run(run_dir, port)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, device_scale_factor=2)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_page(page, f"http://127.0.0.1:{port}/", process)
        loss = "canvas[data-title='policy loss']"
        until(lambda: number(page, loss, "data-points") == 40, 30, "the curves")

        def ticks(selector: str, axis: str) -> list[str]:
            return list(json.loads(page.get_attribute(selector, f"data-{axis}-ticks") or "[]"))

        y = ticks(loss, "y")
        assert is_1_2_5([float(label) for label in y]), y  # not 0.0142 / -0.0103 ...
        x = ticks(loss, "x")
        assert len(x) >= 4 and all("," in label for label in x[1:]), x  # 20,000 40,000 ...
        assert is_1_2_5([float(label.replace(",", "")) for label in x]), x
        clip = ticks("canvas[data-title='clip fraction']", "y")
        assert float(clip[0]) >= 0 and is_1_2_5([float(label) for label in clip]), clip
        kl = ticks("canvas[data-title='KL from the pre-update policy']", "y")
        assert set(kl) <= {"0.0001", "0.001", "0.01", "0.1", "1", "10", "100", "1,000", "10,000"}, kl
        assert len(kl) >= 3
        # distinct colours, named in a legend
        keys = page.locator(".chart[data-title='KL from the pre-update policy'] .legend .key")
        assert keys.count() == 2 and keys.nth(0).inner_text() == "exact"
        colours = {keys.nth(k).locator(".swatch").evaluate("node => node.style.borderColor")
                   for k in range(2)}
        assert len(colours) == 2
        speed = page.locator(".chart[data-title='steps per second'] .legend .key")
        assert speed.count() == 1 and speed.nth(0).inner_text() == "learner"  # no actors' line
        # the healthy bands: KL far above 0.05 is flagged, a clip fraction of 0.06 is not
        kl_card = ".chart[data-title='KL from the pre-update policy']"
        assert page.get_attribute(kl_card, "data-health") == "outside"
        assert "outside the healthy band: exact 36.1 > 0.05" in page.inner_text(kl_card + " .flag")
        assert page.get_attribute(".chart[data-title='clip fraction']", "data-health") == "within"
        assert page.get_attribute(loss.replace("canvas", ".chart"), "data-health") == ""
        # no data, no chart
        assert not page.is_visible(".chart[data-title='search-target loss']")
        # sharp on a high-DPI screen: the canvas has the screen's pixels
        width = page.locator(loss).evaluate("node => [node.width, node.clientWidth]")
        assert width[0] == 2 * width[1], width
        # the values at a step under the pointer
        box = page.locator(loss).bounding_box()
        page.mouse.move(box["x"] + box["width"] - 11, box["y"] + 40)  # the plot's right end
        readout = page.locator(".chart[data-title='policy loss'] .readout")
        until(lambda: "step 81,920" in readout.inner_text(), 10,
              f"the readout at the last step, not {readout.inner_text()!r}")
        assert "policy loss -0.0658" in readout.inner_text()
        # the newest part only
        page.select_option("#x-range", "0.25")
        until(lambda: number(page, loss, "data-points") < 40, 10, "the range to narrow")
        assert float(ticks(loss, "x")[0].replace(",", "")) >= 60_000
        page.screenshot(path=str(shots / "web-charts.png"), full_page=True)
        # the games browser: grouped, named for people, paged, filtered; players by the hands
        games = page.locator("#game-list li[data-path]")
        until(lambda: games.count() == 25, 30, "a page of games")
        groups = page.locator("#game-group option").all_inner_texts()
        assert groups == ["all groups (33)", "rating of step 2,048 vs greedy (30)",
                          "self-play samples (3)"] or groups == [
            "all groups (33)", "self-play samples (3)", "rating of step 2,048 vs greedy (30)"], groups
        assert page.inner_text("#games-page") == "1–25 of 33"
        title = games.first.locator(".title").inner_text()
        assert " ☗ vs " in title and " ☖ — " in title and title.endswith(" plies"), title
        page.click("#games-next")
        assert page.inner_text("#games-page") == "26–33 of 33" and games.count() == 8
        page.fill("#game-filter", "greedy")
        until(lambda: page.inner_text("#games-page") == "1–25 of 30", 10, "the filter")
        page.select_option("#game-group", "self-play samples")
        until(lambda: page.inner_text("#games-page") == "", 10, "no sample game with greedy")
        assert page.inner_text("#game-list") == "no game matches"
        page.fill("#game-filter", "")
        until(lambda: games.count() == 3, 10, "the three samples")
        page.select_option("#game-group", "rating of step 2,048 vs greedy")
        rating = page.locator("#game-list li[data-path*='0029-greedy-vs-step']")
        until(lambda: rating.count() == 1, 10, "a game with greedy as Black")
        rating.click()
        until(lambda: page.inner_text("#player-black") == "☗ greedy", 10, "the players named")
        assert page.inner_text("#player-white") == "☖ step 2,048"
        assert page.locator("#game-list li.current").count() == 1
        page.screenshot(path=str(shots / "web-games.png"), full_page=True)
        # nothing overflows: the actor table fits its box at 1400 px ...
        until(lambda: page.locator("#actors tr").count() == 3, 10, "the actor table")
        fits = page.locator("#actors").evaluate("node => node.scrollWidth <= node.parentElement.clientWidth")
        assert fits
        # ... and at 420 px nothing scrolls sideways
        page.set_viewport_size({"width": 420, "height": 900})
        time.sleep(0.5)
        wide = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert wide[0] <= wide[1], wide
        page.screenshot(path=str(shots / "web-narrow.png"), full_page=True)
        assert not errors, errors
    finally:
        reap(process)


def test_a_person_plays_a_whole_game_in_the_browser(tmp_path: Path, browser: Any) -> None:
    import random
    import urllib.request

    import torch

    from keisei.checkpoint import save_policy
    from keisei.config import build_config
    from keisei.model import build_model

    shots = screenshots(tmp_path)
    config = build_config([{"model": {"blocks": 1, "channels": 16, "value_hidden": 16}}])
    torch.manual_seed(0)
    checkpoint = save_policy(tmp_path / "tiny.pt", {
        "model": build_model(config.model).state_dict(), "config": config.to_dict(),
        "counters": {"step": 128, "policy_version": 1}})
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "keisei-play"), str(checkpoint),
                                "--address", f"127.0.0.1:{port}", "--movetime", "20",
                                "--max-plies", "300", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def state_of(game_id: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{base}/api/games/{game_id}", timeout=10) as response:
            return dict(json.loads(response.read()))

    try:
        page = browser.new_page(viewport={"width": 1000, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_page(page, base + "/", process)
        until(lambda: "Keisei tiny" in page.inner_text("#engine-name"), 10, "the engine's name")
        page.fill("#movetime", "0.02")
        page.click("#new-game")
        until(lambda: page.get_attribute("#status", "data-state") == "your-move", 30, "the game")
        game_id = page.get_attribute("#board", "data-game") or ""
        # a move no piece can make is refused with the reason, and nothing changes
        page.click(".cell[data-square='7g']")
        page.click(".cell[data-square='7e']")
        until(lambda: "no piece of yours moves so" in page.inner_text("#message"), 10, "the reason")
        assert state_of(game_id)["moves"] == []
        rng = random.Random(7)
        promoted = dropped = False
        for _ in range(140):
            until(lambda: page.get_attribute("#status", "data-state") in ("your-move", "over"), 60,
                  "the engine's move")
            state = state_of(game_id)
            if state["over"]:
                break
            if promoted and dropped:
                break
            legal = state["legal"]
            plies = len(state["moves"])
            choices = [move for move in legal if move + "+" in legal]
            drops = [move for move in legal if move[1] == "*"]
            if choices and not promoted:
                move, promoted = rng.choice(choices) + "+", True
            elif drops and not dropped:
                move, dropped = rng.choice(drops), True
            else:
                move = rng.choice(legal)
            if move[1] == "*":
                page.click(f"#hand-bottom button[data-piece='{move[0]}']")
            else:
                page.click(f".cell[data-square='{move[:2]}']")
            page.click(f".cell[data-square='{move[2:4]}']")
            if move.endswith("+") and move[:-1] in legal:
                page.wait_for_selector("#promotion:not([hidden])", timeout=5000)
                page.click("#promote-yes")
            elif move + "+" in legal:  # a move that may promote, played without promoting
                page.wait_for_selector("#promotion:not([hidden])", timeout=5000)
                page.click("#promote-no")
            until(lambda before=plies: number(page, "#board", "data-plies") > before, 30,  # type: ignore[misc]
                  f"{move} on the board")
            assert state_of(game_id)["moves"][plies] == move
        assert promoted and dropped, "no promotion or no drop in 140 moves"
        if not state_of(game_id)["over"]:
            page.click("#resign")
        until(lambda: page.get_attribute("#status", "data-state") == "over", 10, "the end")
        assert page.is_visible("#evaluation")
        page.screenshot(path=str(shots / "play.png"), full_page=True)
        with urllib.request.urlopen(base + (page.get_attribute("#save-csa", "href") or ""),
                                    timeout=10) as response:
            record = response.read().decode()
        moves = state_of(game_id)["moves"]
        assert record.count("\n+") + record.count("\n-") >= len(moves) and "%TORYO" in record
        assert not errors, errors
    finally:
        reap(process)
