"""keisei-usi driven by a USI client: legal moves through whole games, garbage survived."""

from __future__ import annotations

import queue
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keisei.checkpoint import save_checkpoint
from keisei.config import build_config
from keisei.model import build_model
from keisei.shogi import Game

BIN = Path(sys.executable).parent


class UsiClient:
    """A minimal USI client: every read has a timeout, a dead engine fails the test."""

    def __init__(self, checkpoint: Path) -> None:
        self.process = subprocess.Popen([str(BIN / "keisei-usi"), "--checkpoint", str(checkpoint)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def until(self, prefix: str, timeout: float = 30) -> list[str]:
        seen = []
        while True:
            line = self.lines.get(timeout=timeout)
            seen.append(line)
            if line.startswith(prefix):
                return seen

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("quit")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = build_config([{"model": {"blocks": 1, "channels": 16, "value_hidden": 16}}])
    directory = tmp_path_factory.mktemp("usi")
    return save_checkpoint(directory, 0, {"model": build_model(config.model).state_dict(),
                                          "config": config.to_dict(),
                                          "counters": {"step": 0, "policy_version": 3}}, keep=1)


def start(checkpoint: Path) -> UsiClient:
    client = UsiClient(checkpoint)
    client.send("usi")
    greeting = client.until("usiok")
    assert any(line.startswith("id name Keisei") and "policy v3" in line for line in greeting)
    client.send("setoption name ResignValue value 0")
    client.send("isready")
    client.until("readyok")
    client.send("usinewgame")
    return client


def engine_move(client: UsiClient, game: Game) -> str:
    client.send(f"position {game.to_position()}")
    client.send("go btime 1000 wtime 1000 byoyomi 100")
    return client.until("bestmove")[-1].split()[1]


def test_full_game_against_random_with_only_legal_moves(checkpoint: Path) -> None:
    client = start(checkpoint)
    rng = random.Random(0)
    game = Game(max_plies=160)
    try:
        while not game.is_over:
            move = engine_move(client, game)
            assert move not in ("resign", "win")  # ResignValue 0: the engine plays on
            game.push_usi(move)  # raises if the engine's move is illegal
            if not game.is_over:
                game.push(rng.choice(game.legal_moves()))
    finally:
        client.close()
    assert game.ply >= 2 and game.outcome is not None


def test_two_engines_play_each_other(checkpoint: Path) -> None:
    black, white = start(checkpoint), start(checkpoint)
    game = Game(max_plies=60)
    try:
        while not game.is_over:
            game.push_usi(engine_move(black if game.side_to_move == "black" else white, game))
    finally:
        black.close()
        white.close()
    assert game.outcome is not None and game.ply > 0


def test_garbage_is_answered_and_survived(checkpoint: Path) -> None:
    client = start(checkpoint)
    try:
        for garbage in ("hello", "position nonsense", "position startpos moves 7g7e",
                        "setoption name Nope value 1", "setoption name Temperature"):
            client.send(garbage)
            assert client.until("info string")[-1].startswith("info string")
        client.send("position startpos moves 7g7f")  # still usable afterwards
        client.send("go infinite")
        client.send("isready")  # answered while it searches
        client.until("readyok")
        client.send("stop")
        move = client.until("bestmove")[-1].split()[1]
        Game.from_position(f"startpos moves 7g7f {move}")
        client.send("position sfen 4k4/4G4/4P4/9/9/9/9/9/4K4 w - 1")  # white is mated
        client.send("go")
        assert client.until("bestmove")[-1] == "bestmove resign"
        client.send("quit")
        assert client.process.wait(timeout=10) == 0
    finally:
        client.close()


INFO = re.compile(r"^info depth (\d+) seldepth (\d+)( multipv \d+)? nodes (\d+) nps \d+ "
                  r"time \d+ score (cp -?\d+|mate (\d+|\+)) pv( [0-9a-zA-Z*+]+)+$")


@pytest.mark.parametrize("go", ["go btime 60000 wtime 60000 byoyomi 200",
                                "go btime 2000 wtime 2000 binc 100 winc 100",
                                "go btime 0 wtime 0 byoyomi 300", "go movetime 200",
                                "go nodes 300", "go", "go infinite"])
def test_every_time_control_gives_a_legal_move_and_well_formed_info(checkpoint: Path, go: str) -> None:
    client = start(checkpoint)
    try:
        client.send("setoption name MultiPV value 2")
        client.send("position startpos moves 7g7f 3c3d")
        started = time.monotonic()
        client.send(go)
        if go == "go infinite":
            time.sleep(1.5)
            client.send("stop")
        lines = client.until("bestmove")
        elapsed = time.monotonic() - started
        infos = [line for line in lines if line.startswith("info depth")]
        assert infos and all(INFO.match(line) for line in infos), infos
        last = INFO.match(infos[-1])
        assert last is not None
        move = lines[-1].split()[1]
        Game.from_position(f"startpos moves 7g7f 3c3d {move}")  # legal
        assert infos[-1].split(" pv ")[1].split()[0] == move or " multipv 2 " in infos[-1]
        if go == "go nodes 300":
            assert int(last.group(4)) <= 300
        if "movetime" in go or "byoyomi 200" in go:
            assert elapsed < 3.0, elapsed  # the budget, plus start-up of a first search
    finally:
        client.close()


def test_policy_only_plays_without_search(checkpoint: Path) -> None:
    client = start(checkpoint)
    try:
        client.send("setoption name PolicyOnly value true")
        client.send("position startpos")
        client.send("go btime 1000 wtime 1000 byoyomi 100")
        lines = client.until("bestmove")
        assert lines[-2].startswith("info depth 1 score cp ") and lines[-2].endswith(lines[-1].split()[1])
    finally:
        client.close()


@pytest.mark.parametrize("command", ["workers.usi", "workers.evaluate"])
def test_a_file_that_is_not_a_checkpoint_gets_one_clear_line(tmp_path: Path, command: str) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 50)
    extra = ["--opponent", "random", "--output", str(tmp_path / "out")] if command == "workers.evaluate" else []
    result = subprocess.run([sys.executable, "-m", command, "--checkpoint", str(garbage), *extra],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "garbage.pt: not a readable Keisei checkpoint" in lines[0], result.stderr


def test_a_setting_outside_search_is_refused(checkpoint: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "workers.usi", "--checkpoint", str(checkpoint),
                             "--set", "train.learning_rate=1", "--set", "search.c_puct=2"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "'train.learning_rate=1': only search.KEY=VALUE settings apply to a search" in result.stderr
