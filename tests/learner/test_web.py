"""The web view's server and API (``learner.view``) over a run directory made by hand: what
it serves, what it refuses (path traversal, malformed queries, writes), its bounds, and
the collector's watched game it shows live."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers import epoch_report

from keisei.config import SelfPlayConfig
from keisei.kifu import to_csa
from keisei.model import PRESETS, build_model
from keisei.selfplay import Collector
from keisei.shogi import play_random_game
from learner.view import run_files, server
from learner.view.address import parse_address
from learner.view.games import LiveGame
from learner.view.run_files import RunFiles
from learner.view.server import WebView


def write_run(run_dir: Path, epochs: int = 3) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text("[train]\ntotal_steps = 12800\n")
    with (run_dir / "metrics.jsonl").open("w") as stream:
        for epoch in range(1, epochs + 1):
            record = epoch_report(128 * epoch, epoch, policy_loss=1.0 / epoch).to_json()  # type: ignore[attr-defined]
            record["time"] = 1000.0 + 10 * epoch
            stream.write(json.dumps(record) + "\n")
    (run_dir / "status.json").write_text(json.dumps({
        "time": time.time(), "mode": "distributed", "step": 384, "epoch": 3, "policy_version": 3,
        "pid": 1, "actors": [{"actor_id": "a1", "host": "h", "state": "healthy",
                              "steps_per_second": 50.0, "policy_version": 3, "games_received": 4,
                              "restarts": 0, "steps_dropped": 0, "seconds_since_heard": 0.2}],
        "transitions": [], "ledger": {"carried": 0, "received": 400, "trained": 384,
                                      "dropped": {"stale": 0}, "waiting": 16}}))
    (run_dir / "ratings.json").write_text(json.dumps({
        "anchor": "random", "table": {"random": 0.0, "greedy": 200.0, "step-000000000256": 150.0},
        "latest": {"name": "step-000000000256", "step": 256, "elo": 150.0,
                   "scores": {"random": 0.9, "greedy": 0.4}},
        "rated": [["step-000000000256", 256]],
        "pairings": [{"first": "step-000000000256", "second": "random", "wins": 9, "draws": 0,
                      "losses": 1},
                     {"first": "step-000000000256", "second": "greedy", "wins": 4, "draws": 0,
                      "losses": 6}],
        "skipped": 0}))
    games = run_dir / "games"
    games.mkdir()
    (games / "game-000000000256.csa").write_text(to_csa(play_random_game(seed=3, max_plies=30)))
    rating_games = run_dir / "ratings" / "jobs" / "step-000000000256" / "greedy"
    rating_games.mkdir(parents=True)
    (rating_games / "0001-a-vs-b.csa").write_text(to_csa(play_random_game(seed=4, max_plies=20)))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebView, Path]]:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    with WebView("127.0.0.1:0", [run_dir]) as view:
        yield view, run_dir


def get(view: WebView, path: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(view.url.rstrip("/") + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(body) if "json" in kind else body
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, json.loads(body) if body.startswith(b"{") else body


def test_the_page_and_its_assets_are_served_from_the_package(served: tuple[WebView, Path]) -> None:
    view, _ = served
    status, page = get(view, "/")
    assert status == 200 and b"<script src=\"/app.js\"" in page
    for asset in ("/app.js", "/style.css"):
        status, body = get(view, asset)
        assert status == 200 and len(body) > 1000
    assert b"http" not in get(view, "/app.js")[1].replace(b"http://", b"")  # nothing fetched from afar
    assert get(view, "/nothing")[0] == 404


def test_the_runs_summary_reads_the_run_directory(served: tuple[WebView, Path]) -> None:
    view, _ = served
    status, answer = get(view, "/api/runs")
    assert status == 200
    run = answer["runs"][0]
    assert (run["step"], run["epoch"], run["total_steps"], run["points"]) == (384, 3, 12800, 3)
    assert run["mode"] == "distributed"  # the fresh status.json's
    assert run["state"] == "running" and run["ended"] is None
    assert run["eta_seconds"] == pytest.approx((12800 - 384) / 100.0)
    assert run["ledger"]["trained"] == 384
    assert run["actors"][0]["actor_id"] == "a1"
    ratings = {row["name"]: row for row in run["ratings"]}
    assert ratings["step-000000000256"]["elo"] == 150.0
    assert ratings["step-000000000256"]["games"] == 20 and ratings["step-000000000256"]["interval"] > 0
    assert run["ladder"] == {"random": 0.9, "greedy": 0.4}


def test_a_time_budget_ends_the_estimate_when_it_comes_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    (run_dir / "config.toml").write_text("[train]\ntotal_steps = 1000000000\nminutes = 2.0\n")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lines[-1]["train_seconds"] = 90.0  # 30 s of the 2 minutes left
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with WebView("127.0.0.1:0", [run_dir]) as view:
        run = get(view, "/api/runs")[1]["runs"][0]
    assert (run["minutes"], run["train_seconds"]) == (2.0, 90.0)
    assert run["eta_seconds"] == pytest.approx(30.0)


def test_a_run_that_ended_is_shown_as_it_ended_however_old_its_status(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    ended = time.time() - 3600  # the learner's final status, written an hour ago
    status.update(time=ended, ended=ended, state="finished", total_steps=384)
    status["actors"][0]["state"] = "stopped"
    (run_dir / "status.json").write_text(json.dumps(status))
    with WebView("127.0.0.1:0", [run_dir]) as view:
        run = get(view, "/api/runs")[1]["runs"][0]
    assert (run["state"], run["ended"], run["mode"]) == ("finished", ended, "distributed")
    assert [actor["state"] for actor in run["actors"]] == ["stopped"]
    status.pop("state")  # a learner gone without a final status: neither running nor ended
    (run_dir / "status.json").write_text(json.dumps(status))
    with WebView("127.0.0.1:0", [run_dir]) as view:
        run = get(view, "/api/runs")[1]["runs"][0]
    assert run["state"] is None and run["ended"] is None


def test_curve_points_come_in_pieces_and_follow_the_file(served: tuple[WebView, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    view, run_dir = served
    monkeypatch.setattr(run_files, "MAX_RESPONSE_POINTS", 2)
    monkeypatch.setattr(run_files, "REFRESH_SECONDS", 0.0)
    status, first = get(view, "/api/runs/0/metrics?from=0")
    assert status == 200 and first["total"] == 3 and len(first["points"]) == 2
    fields = first["fields"]
    assert first["points"][0][fields.index("step")] == 128
    assert first["points"][1][fields.index("time")] == 10.0  # wall-clock since the first epoch
    rest = get(view, f"/api/runs/0/metrics?gen={first['generation']}&from=2")[1]
    assert [point[0] for point in rest["points"]] == [384]
    # a line being written is taken once it is whole
    record = epoch_report(512, 4).to_json()  # type: ignore[attr-defined]
    text = json.dumps(record)
    with (run_dir / "metrics.jsonl").open("a") as stream:
        stream.write(text[:20])
    assert get(view, "/api/runs/0/metrics?from=0")[1]["total"] == 3
    with (run_dir / "metrics.jsonl").open("a") as stream:
        stream.write(text[20:] + "\n")
    assert get(view, "/api/runs/0/metrics?from=0")[1]["total"] == 4
    # a file cut back (a resume) starts the curve over, under a new generation
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:1]))
    again = get(view, f"/api/runs/0/metrics?gen={first['generation']}&from=3")[1]
    assert again["generation"] != first["generation"] and again["from"] == 0
    assert again["total"] == 1


def test_finished_games_are_listed_and_replay(served: tuple[WebView, Path]) -> None:
    view, _ = served
    games = get(view, "/api/runs/0/games")[1]["games"]
    assert {game["kind"] for game in games} == {"sample", "rating"}
    for game in games:
        status, replay = get(view, f"/api/runs/0/game?path={game['path']}")
        assert status == 200
        assert len(replay["sfens"]) == len(replay["moves"]) + 1 > 1
        assert replay["result"]
        # listed with what a person needs to choose it
        assert (game["result"], game["plies"]) == (replay["result"], len(replay["moves"]))
    groups = {game["kind"]: game["group"] for game in games}
    assert groups == {"sample": "self-play samples", "rating": "rating of step 256 vs greedy"}
    assert {(game["black"], game["white"]) for game in games} == {("Keisei", "Keisei")}


def test_a_record_that_does_not_replay_is_listed_with_why(served: tuple[WebView, Path]) -> None:
    view, run_dir = served
    (run_dir / "games" / "game-000000000384.csa").write_text("V2.2\nPI\n+\n+9999XX\n")
    broken = next(game for game in get(view, "/api/runs/0/games")[1]["games"]
                  if game["path"] == "games/game-000000000384.csa")
    assert broken["unread"] and "result" not in broken


@pytest.mark.parametrize("path", [
    "../outside.csa", "..%2Foutside.csa", "/etc/passwd", "%2Fetc%2Fpasswd", "games/../../outside.csa",
    "config.toml", "games%5C..%5C..%5Coutside.csa", "games/%00.csa", "escape/outside.csa",
    "games/missing.csa", "", "x" * 600 + ".csa",
])
def test_nothing_outside_the_run_directory_is_served(served: tuple[WebView, Path], path: str) -> None:
    view, run_dir = served
    (run_dir.parent / "outside.csa").write_text("secret")
    (run_dir / "escape").symlink_to(run_dir.parent, target_is_directory=True)
    status, answer = get(view, f"/api/runs/0/game?path={path}")
    assert status in (400, 403, 404), answer
    assert "secret" not in json.dumps(answer) and "error" in answer


@pytest.mark.parametrize(("path", "status"), [
    ("/api/runs/0/metrics?from=abc", 400), ("/api/runs/0/metrics?from=-1", 400),
    ("/api/runs/0/metrics?gen=x", 400), ("/api/runs/7/metrics", 404), ("/api/runs/x/games", 400),
    ("/api/runs/0/game", 400), ("/api/runs/0/nothing", 404), ("/api/nothing", 404),
    ("/api/runs/0/metrics?" + "&".join(f"k{i}=1" for i in range(50)), 400),
])
def test_malformed_queries_get_a_clear_error(served: tuple[WebView, Path], path: str, status: int) -> None:
    view, _ = served
    code, answer = get(view, path)
    assert code == status and answer["error"]


def raw_request(view: WebView, head: bytes) -> tuple[int, str, Any]:
    """Send ``head`` as it is; the status, the content type and the JSON body."""
    port = int(view.url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    kind = next(line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("content-type"))
    return int(lines[0].split()[1]), kind, json.loads(body)


@pytest.mark.parametrize(("host", "allowed"), [
    ("127.0.0.1:8080", True), ("localhost", True), ("LOCALHOST:80", True), ("[::1]:8080", True),
    ("192.168.1.20:8080", True), ("shogi.lan:8080", True), ("evil.example", False),
    ("evil.example:8080", False), ("127.0.0.1.evil.example", False), ("", False),
])
def test_a_host_header_that_names_another_site_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, allowed: bool) -> None:
    monkeypatch.setenv("KEISEI_WEB_HOSTS", "shogi.lan, other.lan")  # names a user allowed
    run_dir = tmp_path / "run"
    write_run(run_dir)
    with WebView("127.0.0.1:0", [run_dir]) as view:
        status, kind, answer = raw_request(
            view, f"GET /api/runs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert kind == "application/json"
    if allowed:
        assert status == 200 and answer["runs"][0]["step"] == 384
    else:
        assert status == 403 and "DNS rebinding" in answer["error"] and "runs" not in answer


def test_errors_the_http_layer_answers_are_json_too(served: tuple[WebView, Path]) -> None:
    view, _ = served
    status, kind, answer = raw_request(view, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert (status, kind) == (414, "application/json") and answer["error"].startswith("414")
    headers = b"".join(b"X-%d: 1\r\n" % number for number in range(120))
    status, kind, answer = raw_request(view, b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert (status, kind) == (431, "application/json") and "431" in answer["error"]


def test_it_is_read_only(served: tuple[WebView, Path]) -> None:
    view, _ = served
    for method in ("POST", "PUT", "DELETE"):
        status, answer = get(view, "/api/runs", method=method)
        assert status == 405 and "read-only" in answer["error"]


def test_events_stream_the_runs_and_the_live_game(served: tuple[WebView, Path]) -> None:
    view, _ = served
    with urllib.request.urlopen(view.url + "api/events", timeout=10) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        events = []
        while len(events) < 2:
            line = stream.readline().decode()
            if line.startswith("event: "):
                events.append(line.split()[1])
    assert events == ["runs", "live"]


def test_connections_and_streams_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    monkeypatch.setattr(server, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(server, "MAX_STREAMS", 1)
    with WebView("127.0.0.1:0", [run_dir]) as view:
        host, port = view.server.server_address[:2]
        idle = [socket.create_connection((host, port), timeout=5) for _ in range(3)]
        time.sleep(0.3)
        extra = socket.create_connection((host, port), timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        for connection in (*idle, extra):
            connection.close()
        time.sleep(0.3)
        with urllib.request.urlopen(view.url + "api/events", timeout=10):
            assert get(view, "/api/events")[0] == 503  # one page at a time here
        assert get(view, "/api/runs")[0] == 200  # the rest still answers


def test_a_stalled_client_does_not_hold_up_the_others(served: tuple[WebView, Path]) -> None:
    view, _ = served
    host, port = view.server.server_address[:2]
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stalled.connect((host, port))
    stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
    started = time.monotonic()
    for _ in range(5):
        assert get(view, "/api/runs")[0] == 200
    assert time.monotonic() - started < 5
    stalled.close()


def test_the_live_game_is_shown_from_blacks_view(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir)
    game = play_random_game(seed=5, max_plies=4)
    live = LiveGame("k", "test", game.start_sfen, tuple(game.moves), values=(0.5, 0.25, -0.5, 1.0),
                    movers=(0, 1, 0, 1))
    with WebView("127.0.0.1:0", [run_dir], lambda: live) as view:
        answer = get(view, "/api/live")[1]
    assert answer["values"] == [0.5, -0.25, -0.5, -1.0]
    assert answer["live"] is True and len(answer["sfens"]) == 5 and len(answer["moves"]) == 4


def test_without_a_learner_the_newest_sample_game_is_the_live_board(served: tuple[WebView, Path]) -> None:
    view, _ = served
    answer = get(view, "/api/live")[1]
    assert answer["live"] is False and answer["source"].endswith("game-000000000256.csa")


def test_the_collector_publishes_its_first_game_as_it_is_played() -> None:
    collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=2, max_plies=6),
                          sink=type("Sink", (), {"put_record": lambda self, record: None})())
    collector.step(0)
    assert collector.watched is None  # only when watched
    collector.watch = True
    numbers, lengths, results = set(), [], []
    for _ in range(10):
        collector.step(0)
        watched = collector.watched
        assert watched is not None
        assert len(watched.moves) == len(watched.values) == len(watched.movers)
        numbers.add(watched.number)
        lengths.append(len(watched.moves))
        results.append(watched.result)
    assert len(numbers) >= 2  # a finished game makes way for the next one
    assert max(lengths) == 6  # its end is published, with the result
    assert results[lengths.index(6)] is not None
    assert all(result is None for result, length in zip(results, lengths, strict=True) if length < 6)


def test_addresses(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:81") == ("0.0.0.0", 81)
    assert parse_address("[::1]:81") == ("::1", 81)
    for bad in ("http", "1.2.3.4:99999", "host:"):
        with pytest.raises(ValueError, match="web address"):
            parse_address(bad)
    write_run(tmp_path / "run")
    with caplog.at_level(logging.WARNING), WebView("0.0.0.0:0", [tmp_path / "run"]):
        pass
    assert "anyone who can reach this address" in caplog.text


def test_runs_files_thin_long_curves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    write_run(run_dir, epochs=50)
    monkeypatch.setattr(run_files, "MAX_KEPT_POINTS", 20)
    files = RunFiles(0, run_dir)
    files.refresh(force=True)
    assert len(files.points) <= 40 and files.generation >= 1
    assert files.points[-1][0] == 128 * 50  # the newest is always kept


def test_keisei_web_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "learner.view.web", str(tmp_path / "missing"), str(tmp_path),
                             "--address", "host:port"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "missing: not a directory" in result.stderr
    assert "holds no run" in result.stderr and "the port must be a number" in result.stderr


def test_the_learner_option_is_checked() -> None:
    from keisei.config import ConfigError
    from learner.app import LearnerOptions

    with pytest.raises(ConfigError, match="--web: web address"):
        replace(LearnerOptions(), web="localhost:http").check()


def test_a_web_port_in_use_stops_the_learner_before_it_writes_a_run(tmp_path: Path) -> None:
    from helpers import learner_command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_dir = tmp_path / "run"
        result = subprocess.run([*learner_command(run_dir, "train.total_steps=128"),
                                 "--web", f"127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"web view: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not list((run_dir / "checkpoints").glob("checkpoint-*.pt"))
