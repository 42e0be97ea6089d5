"""keisei-play: a person plays the network over HTTP; moves checked, records saved, the
server bounded."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from keisei.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    save_policy,
)
from keisei.config import build_config
from keisei.evaluation import load_policy
from keisei.kifu import read_csa
from keisei.model import build_model
from keisei.shogi import Game
from learner.view import play
from learner.view.play import PlayServer, why_illegal

TINY = {"blocks": 1, "channels": 16, "value_hidden": 16}


def tiny_state() -> dict[str, Any]:
    config = build_config([{"model": TINY}])
    torch.manual_seed(0)
    return {"model": build_model(config.model).state_dict(), "config": config.to_dict(),
            "counters": {"step": 128, "policy_version": 1}}


@pytest.fixture
def server() -> Iterator[PlayServer]:
    config = build_config([{"model": TINY}])
    model = build_model(config.model).eval()
    served = PlayServer(("127.0.0.1", 0), model, "Keisei test", 20, None, max_plies=40)
    thread = threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.shutdown()
        served.server_close()
        thread.join(timeout=10)


def call(server: PlayServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if "json" in kind else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def engine_done(server: PlayServer, game_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status, state = call(server, "GET", f"/api/games/{game_id}")
        assert status == 200, state
        if not state["thinking"] and (state["over"] or state["turn"] == state["human"]):
            return state
        assert time.monotonic() < deadline, "the engine did not move within 30 s"
        time.sleep(0.05)


def test_a_run_directory_stands_for_its_newest_checkpoint(tmp_path: Path) -> None:
    state = tiny_state()
    save_checkpoint(tmp_path / "run" / "checkpoints", 128, state, keep=3)
    newest = save_checkpoint(tmp_path / "run" / "checkpoints", 256, state, keep=3)
    assert resolve_checkpoint(tmp_path / "run") == newest
    single = save_policy(tmp_path / "one.pt", state)
    assert resolve_checkpoint(single) == single
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without a checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    # every command loads through load_checkpoint: a run folder works wherever a file does
    assert load_checkpoint(tmp_path / "run")["counters"]["step"] == 128
    model, version = load_policy(tmp_path / "run")
    assert version == 1


def test_a_game_is_played_move_by_move_and_saved(server: PlayServer) -> None:
    status, state = call(server, "POST", "/api/games", {"side": "black", "movetime": 20})
    assert status == 201 and state["turn"] == "black" and "7g7f" in state["legal"]
    game_id = state["id"]
    status, state = call(server, "POST", f"/api/games/{game_id}/move", {"move": "7g7f"})
    assert status == 200 and state["moves"] == ["7g7f"] and state["legal"] == []
    status, busy = call(server, "POST", f"/api/games/{game_id}/move", {"move": "2g2f"})
    assert (status, busy["error"]) == (409, "it is the engine's turn") or not state["thinking"]
    state = engine_done(server, game_id)
    assert len(state["moves"]) == 2 and state["engine"]["move"] == state["moves"][1]
    assert state["engine"]["visits"] >= 1 and -1 <= state["engine"]["value"] <= 1
    status, record = call(server, "GET", f"/api/games/{game_id}/record.csa")
    assert status == 200
    replay = Game()
    for usi in state["moves"]:
        replay.push_usi(usi)
    assert read_csa(record.decode()).moves == replay.moves
    assert b"N+You" in record and b"N-Keisei test" in record
    status, kif = call(server, "GET", f"/api/games/{game_id}/record.kif")
    assert status == 200 and "先手：You".encode("cp932") in kif
    status, state = call(server, "POST", f"/api/games/{game_id}/resign")
    assert state["over"] and state["winner"] == "white" and "resignation" in state["result"]
    status, refused = call(server, "POST", f"/api/games/{game_id}/move", {"move": "2g2f"})
    assert status == 409 and "over" in refused["error"]


def test_the_engine_moves_first_when_the_person_plays_white(server: PlayServer) -> None:
    status, state = call(server, "POST", "/api/games", {"side": "white"})
    assert status == 201 and state["human"] == "white"
    state = engine_done(server, state["id"])
    assert len(state["moves"]) == 1 and state["turn"] == "white" and state["legal"]


@pytest.mark.parametrize(("move", "reason"), [
    ("7g7e", "7g7e: no piece of yours moves so"),
    ("P*5e", "P*5e: you have no P in hand"),
    ("hello", "not a move in USI notation"),
    ("5i5g", "5i5g: no piece of yours moves so"),
])
def test_an_illegal_move_is_refused_with_the_reason(server: PlayServer, move: str, reason: str) -> None:
    _, state = call(server, "POST", "/api/games", {"side": "black"})
    status, answer = call(server, "POST", f"/api/games/{state['id']}/move", {"move": move})
    assert status == 400 and reason in answer["error"], answer
    assert call(server, "GET", f"/api/games/{state['id']}")[1]["moves"] == []  # unchanged


def test_the_reasons_name_check_and_pawn_drop_mate() -> None:
    pinned = Game("4k4/9/9/9/4r4/9/9/4B4/4K4 b - 1")  # the bishop shields its king
    assert why_illegal(pinned, "5h4g") == "5h4g: it would leave your king in check"
    # a pawn dropped on 5b would mate: the gold on 5c guards it, 6b and 4b, the knights box the king in
    mate = Game("3nkn3/9/4G4/9/9/9/9/9/4K4 b P 1")
    assert "uchifuzume" in why_illegal(mate, "P*5b")


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"side": "purple"}, 400, "black or white"),
    ({"side": "black", "movetime": 0}, 400, "milliseconds"),
    ({"side": "black", "movetime": "1s"}, 400, "milliseconds"),
    (b"not json", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"{" + b" " * 5000 + b"}", 413, "at most 1024"),
])
def test_bad_requests_get_a_clear_json_error(server: PlayServer, body: Any, status: int,
                                             words: str) -> None:
    code, answer = call(server, "POST", "/api/games", body)
    assert code == status and words in answer["error"], answer


def test_games_and_hosts_are_bounded(server: PlayServer) -> None:
    ids = [call(server, "POST", "/api/games", {"side": "black"})[1]["id"] for _ in range(play.MAX_GAMES + 1)]
    assert call(server, "GET", f"/api/games/{ids[0]}")[0] == 404  # the one unseen longest made room
    assert all(call(server, "GET", f"/api/games/{game_id}")[0] == 200 for game_id in ids[1:])
    status, answer = call(server, "GET", "/api/engine", headers={"Host": "evil.example"})
    assert status == 403 and "DNS rebinding" in answer["error"]
    assert call(server, "GET", "/api/nothing")[0] == 404


def test_a_search_whose_page_went_away_is_stopped(server: PlayServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(play, "ABANDON_SECONDS", 0.5)
    _, state = call(server, "POST", "/api/games", {"side": "white", "movetime": 30_000})
    game = server.games[state["id"]]
    assert game.thinking
    deadline = time.monotonic() + 10  # nobody asks: the reaper stops it within seconds
    while game.thinking:
        assert time.monotonic() < deadline, "the abandoned search went on"
        time.sleep(0.1)
    assert game.stop.is_set() and game.game.moves == []  # no move for a page that is gone
    status, state = call(server, "GET", f"/api/games/{state['id']}")  # the page is back
    assert status == 200 and state["thinking"]  # the engine thinks again
    status, state = call(server, "POST", f"/api/games/{state['id']}/resign")
    assert state["over"] and state["winner"] == "black"
    deadline = time.monotonic() + 10  # resigning stopped that search too
    while game.thinking:
        assert time.monotonic() < deadline, "the search went on after the resignation"
        time.sleep(0.1)
