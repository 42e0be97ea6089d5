"""keisei-generate: engine games as CSA that the record reader takes back, with a summary."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import signal_when, start_with_sigint_ignored

from keisei.evaluation import GreedyPlayer, load_openings
from keisei.kifu import ReadStats, read_games
from keisei.shogi import Game
from workers.engines import resolve_command
from workers.generate import main, start_game

ROOT = Path(__file__).resolve().parents[2]


def test_the_record_starts_after_the_random_prefix() -> None:
    opening = load_openings()[0]
    player = GreedyPlayer()
    rng = random.Random(3)
    game = start_game(opening, 6, 1.0, 200, rng, lambda g: player.choose([g], [rng])[0])
    prefix = Game()
    for move in opening:
        prefix.push_usi(move)
    assert game.ply == 0 and game.start_sfen != prefix.sfen()
    assert game.max_plies == 200
    same = start_game(opening, 6, 0.0, 200, rng, lambda g: player.choose([g], [rng])[0])
    assert same.ply == 0  # no random move: the prefix is the opening and the engine's moves


def test_greedy_games_on_two_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "games"
    assert main(["--engine", "greedy", "--games", "6", "--workers", "2", "--max-plies", "80",
                 "--output", str(output), "--progress", "0.2"]) == 0
    assert sorted(path.name for path in output.glob("*.csa")) == ["games-00.csa", "games-01.csa"]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["games"] == 6 and sum(summary["results"].values()) == 6
    stats = ReadStats()
    games = list(read_games([output], stats))
    assert len(games) == 6 and stats.skipped == 0
    assert sum(item.game.ply for item in games) == summary["positions"]
    assert all(item.result_known for item in games)
    assert "done: 6 games" in capsys.readouterr().out


def test_bad_arguments_and_engines_are_refused(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--output", str(tmp_path)]) == 2
    assert "--games N, --minutes M or both" in capsys.readouterr().err
    assert main(["--games", "2", "--random-share", "2", "--output", str(tmp_path)]) == 2
    assert "--random-share" in capsys.readouterr().err
    assert main(["--engine", "usi:/no/such/engine", "--games", "2", "--output", str(tmp_path)]) == 2
    assert "engine" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("fairy-stockfish", path="/usr/games:/usr/bin") is None,
                    reason="Fairy-Stockfish is not installed (apt-get install fairy-stockfish)")
def test_fairy_stockfish_games(tmp_path: Path) -> None:
    resolve_command("fairy-stockfish")
    output = tmp_path / "fsf"
    assert main(["--games", "2", "--depth", "1", "--output", str(output)]) == 0
    games = list(read_games([output]))
    assert len(games) == 2 and all(item.game.outcome is not None for item in games)
    assert "fairy-stockfish (depth 1)" in (output / "games-00.csa").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_it_cleanly_even_started_with_sigint_ignored(
        tmp_path: Path, signum: int) -> None:
    """As a shell's background job starts it (SIGINT ignored), and as keisei-pipeline
    stops its companion: the games kept, the summary written, no worker left behind."""
    output = tmp_path / "games"
    process = start_with_sigint_ignored(
        [sys.executable, "-m", "workers.generate", "--engine", "greedy", "--minutes", "2",
         "--workers", "2", "--max-plies", "80", "--output", str(output), "--progress", "60"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    workers: list[psutil.Process] = []

    def a_game_written() -> bool:
        if not any(path.stat().st_size for path in output.glob("games-*.csa")):
            return False
        workers.extend(psutil.Process(process.pid).children(recursive=True))
        return True

    out, _ = signal_when(process, a_game_written, signum, timeout=60)
    assert process.returncode == 0, out
    assert "interrupted: stopping the workers" in out and "done:" in out
    summary = json.loads((output / "summary.json").read_text())
    # stopped workers finish their move and report: every game on file is counted
    assert 0 < summary["games"] == len(list(read_games([output])))
    assert not [worker for worker in workers if worker.is_running()
                and worker.status() != psutil.STATUS_ZOMBIE]


def test_a_stop_while_a_worker_is_being_started_waits_until_it_has_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """The stop comes between a spawned worker's birth and its start-up data, the moment
    that once left the worker reading half of it (a traceback, and a failed run)."""
    import multiprocessing.util

    spawn = multiprocessing.util.spawnv_passfds

    def stopped_while_spawning(path: bytes, args: list[bytes], passfds: list[int]) -> int:
        pid = spawn(path, args, passfds)
        signal.raise_signal(signal.SIGINT)
        return pid

    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", stopped_while_spawning)
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run in the background
    output = tmp_path / "games"
    assert main(["--engine", "greedy", "--minutes", "1", "--workers", "1",
                 "--output", str(output)]) == 0
    out, err = capfd.readouterr()
    assert "interrupted: stopping the workers" in out and "done: 0 games" in out
    assert "generating with" not in out  # the start line means every worker has started
    assert "Traceback" not in out + err, out + err
    assert json.loads((output / "summary.json").read_text())["games"] == 0
    assert signal.getsignal(signal.SIGINT) == handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
