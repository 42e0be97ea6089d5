"""keisei-eval and the engine players against real processes: Debian's Shogi engines
(skipped, with the reason, where they are not installed), engines that die or stall,
checkpoint against checkpoint with a seed, and the records written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import signal_when, start_with_sigint_ignored

from keisei.checkpoint import save_checkpoint
from keisei.config import build_config
from keisei.evaluation import GreedyPlayer, RandomPlayer, load_openings, play_match, tally
from keisei.kifu import read_csa, read_kif
from keisei.model import build_model
from keisei.shogi import Termination
from workers.engines import (
    EngineError,
    GnuShogiPlayer,
    SearchLimit,
    UsiPlayer,
    UsiSettings,
    resolve_command,
)

BIN = Path(sys.executable).parent
OPENINGS = load_openings()[:4]


def installed(program: str) -> str:
    """The engine's path, or skip naming the Debian package (.ci/run installs them)."""
    try:
        return resolve_command(program)[0]
    except EngineError as exc:
        pytest.skip(f"{exc} — .ci/run installs it with apt-get; it could not be installed here")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    config = build_config([{"model": {"blocks": 1, "channels": 16, "value_hidden": 16}}])
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path_factory.mktemp(f"policy{seed}"), 100 * seed,
                                     {"model": build_model(config.model).state_dict(),
                                      "config": config.to_dict(),
                                      "counters": {"step": 100 * seed, "policy_version": seed}}, keep=1))
    return paths


def keisei_eval(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "keisei-eval"), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_match_against_fairy_stockfish_writes_records_that_parse(checkpoints: list[Path],
                                                                 tmp_path: Path) -> None:
    installed("fairy-stockfish")
    done = keisei_eval("--checkpoint", str(checkpoints[0]), "--opponent", "usi:fairy-stockfish",
                       "--depth", "1", "--usi-option", "Skill Level=-20", "--games", "4",
                       "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "fairy-stockfish (depth 1)" in done.stdout and "score" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    [pairing] = results["pairings"]
    assert pairing["wins"] + pairing["draws"] + pairing["losses"] == 4
    assert [game["index"] for game in results["games"]] == [0, 1, 2, 3]
    # each game names its opening by its moves (an index only orders this match's openings)
    shipped = {" ".join(moves) for moves in load_openings()}
    for game in results["games"]:
        assert game["opening_moves"] in shipped
        [csa] = tmp_path.rglob(f"{game['index']:04d}-*.csa")
        played = read_csa(csa.read_text(encoding="utf-8")).to_position()
        assert played.startswith("startpos moves " + game["opening_moves"] + " ")
    assert sum(game["points"] for game in results["games"]) == pairing["wins"] + 0.5 * pairing["draws"]
    kifs = sorted(tmp_path.rglob("*.kif"))
    assert len(kifs) == 4
    for kif in kifs:
        from_kif = read_kif(kif.read_text(encoding="cp932"))
        from_csa = read_csa(kif.with_suffix(".csa").read_text(encoding="utf-8"))
        assert from_kif.moves == from_csa.moves and len(from_kif.moves) > 8  # opening + play
        assert from_kif.outcome is not None and from_kif.outcome == from_csa.outcome
    assert len({tuple(read_kif(kif.read_text(encoding="cp932")).moves) for kif in kifs}) == 4


def test_sjaak_plays_drops_through_the_at_sign_mapping() -> None:
    installed("sjaakii")
    sjaak = UsiPlayer(UsiSettings("sjaakii", limit=SearchLimit(depth=2), move_timeout=20))
    try:
        played = play_match(sjaak, GreedyPlayer(), OPENINGS, range(2), seed=1, max_plies=200)
    finally:
        sjaak.close()
    assert sjaak.at_drops and "Sjaak" in sjaak.engine_name
    reasons = {item.game.outcome.reason for item in played if item.game.outcome}
    assert Termination.FORFEIT not in reasons and Termination.ILLEGAL_MOVE not in reasons
    drops = [move for item in played for move in item.game.to_position().split() if "*" in move]
    assert drops, "no drop was played: the mapping was not exercised"
    assert tally(played).score > 0.5


def test_gnushogi_and_gps_play_legal_games() -> None:
    installed("gnushogi")
    gnu = GnuShogiPlayer(1, move_timeout=20)
    try:
        played = play_match(gnu, RandomPlayer(), OPENINGS, range(2), seed=2, max_plies=200)
    finally:
        gnu.close()
    assert tally(played).wins == 4  # GNU Shogi at depth 1 beats random
    installed("gpsusi")
    gps = UsiPlayer(UsiSettings("gpsusi", {"LimitDepth": "4"}, SearchLimit(byoyomi_ms=50)))
    try:
        played = play_match(gps, GreedyPlayer(), OPENINGS, range(1), seed=3, max_plies=200)
    finally:
        gps.close()
    assert tally(played).wins == 2


FAKE_ENGINE = """
import random, sys, time
import cshogi
mode, limit = sys.argv[1], int(sys.argv[2])
board, answered = cshogi.Board(), 0
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    if words[0] == "usi":
        print("id name Fake", "option name Hash type spin default 16 min 1 max 64", "usiok", sep="\\n", flush=True)
    elif words[0] == "isready":
        print("readyok", flush=True)
    elif words[0] == "position":
        board.set_position(" ".join(words[1:]))
    elif words[0] == "go":
        answered += 1
        if answered > limit:
            if mode == "die":
                sys.exit(3)
            if mode == "stall":
                time.sleep(60)
            if mode == "garbage":
                print("bestmove 9z9z", flush=True)
                continue
        print("bestmove " + cshogi.move_to_usi(random.choice(list(board.legal_moves))), flush=True)
    elif words[0] == "quit":
        break
"""


@pytest.mark.parametrize("mode", ["die", "stall", "garbage"])
def test_an_engine_that_dies_stalls_or_babbles_forfeits_and_the_match_goes_on(
        mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "fake_engine.py"
    script.write_text(textwrap.dedent(FAKE_ENGINE))
    fake = UsiPlayer(UsiSettings(f"{sys.executable} {script} {mode} 3", move_timeout=1.0, name="fake"))
    started = time.monotonic()
    try:
        played = play_match(fake, RandomPlayer(), OPENINGS, range(2), seed=0, max_plies=60)
    finally:
        fake.close()
    assert time.monotonic() - started < 30
    forfeits = [item for item in played if item.game.outcome
                and item.game.outcome.reason is Termination.FORFEIT]
    assert forfeits, [str(item.game.outcome) for item in played]
    assert all(item.first_points == 0.0 for item in forfeits)
    assert all(item.game.is_over for item in played)
    expected = {"die": "exited (exit code 3)", "stall": "no bestmove within 1 s",
                "garbage": "not a legal move"}[mode]
    assert expected in caplog.text
    assert fake.engine is None or fake.engine.process.poll() is None  # dead ones were reaped


def test_bad_opponents_are_refused_before_any_game(checkpoints: list[Path], tmp_path: Path) -> None:
    cases = [(["--opponent", "usi:no-such-engine-here"], "not on PATH"),
             (["--opponent", "chess"], "is not an opponent"),
             (["--opponent", "gnushogi:99"], "depth from 1 to 29"),
             (["--opponent", "random", "--games", "0"], "--games must be at least 1"),
             (["--opponent", "random", "--mate-plies", "16"], "--mate-plies must be between 0 and 15"),
             (["--opponent", f"checkpoint:{tmp_path / 'missing.pt'}"], "no such checkpoint")]
    if sys.platform.startswith("linux"):
        cases.append(([ "--opponent", f"usi:{sys.executable} -c 'print(\"usiok\")'",
                        "--usi-option", "Skill Level=3"], "has no option ['Skill Level']"))
    for arguments, message in cases:
        done = keisei_eval("--checkpoint", str(checkpoints[0]), *arguments, "--output", str(tmp_path / "x"))
        assert done.returncode == 2 and message in done.stderr, (arguments, done.stderr)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_checkpoint_against_checkpoint_is_reproducible_with_a_seed(checkpoints: list[Path],
                                                                  tmp_path: Path) -> None:
    def run(seed: int, folder: str) -> tuple[dict[str, object], list[str]]:
        done = keisei_eval("--checkpoint", str(checkpoints[0]), "--opponent", f"checkpoint:{checkpoints[1]}",
                           "--temperature", "1", "--games", "6", "--workers", "2", "--seed", str(seed),
                           "--max-plies", "120", "--output", str(tmp_path / folder))
        assert done.returncode == 0, done.stderr
        records = [path.read_text() for path in sorted((tmp_path / folder).rglob("*.csa"))]
        return json.loads((tmp_path / folder / "results.json").read_text())["pairings"], records

    first, again, other = run(7, "a"), run(7, "b"), run(8, "c")
    assert first == again
    assert first[1] != other[1]
    assert len(first[1]) == 6


def test_workers_stop_with_a_killed_keisei_eval(checkpoints: list[Path], tmp_path: Path) -> None:
    evaluation = subprocess.Popen(
        [str(BIN / "keisei-eval"), "--checkpoint", str(checkpoints[0]), "--opponent",
         f"checkpoint:{checkpoints[1]}", "--visits", "64", "--games", "200", "--workers", "2",
         "--output", str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(evaluation.pid)
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        # two pool workers playing their (searched, so minutes long) share of the games
        while time.monotonic() < deadline:
            workers = [child for child in parent.children()
                       if "spawn_main" in " ".join(child.cmdline()) and child.cpu_times().user > 1.0]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, "the pool's workers did not start"
        evaluation.kill()  # no handler runs: the kernel stops the workers
        evaluation.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, f"workers outlived keisei-eval: {[worker.pid for worker in alive]}"
    finally:
        evaluation.kill()
        evaluation.wait(timeout=10)
        for worker in workers:
            if worker.is_running():
                worker.kill()


@pytest.mark.slow
@pytest.mark.e2e
def test_keisei_usi_as_a_usi_opponent_and_the_ladder(checkpoints: list[Path], tmp_path: Path) -> None:
    usi = f"usi:{BIN / 'keisei-usi'} --checkpoint {checkpoints[1]}"
    done = keisei_eval("--checkpoint", str(checkpoints[0]), "--opponent", usi, "--usi-option",
                       "ResignValue=0", "--depth", "1", "--games", "2", "--max-plies", "100",
                       "--output", str(tmp_path / "usi"))
    assert done.returncode == 0, done.stderr
    assert "keisei-usi (depth 1)" in done.stdout
    done = keisei_eval("--checkpoint", str(checkpoints[0]), "--ladder", "--games", "2",
                       "--max-plies", "160", "--workers", "2", "--output", str(tmp_path / "ladder"))
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for rung in ("random", "greedy", "fsf-skill-20-d1", "gnushogi-d1", "gps-ld4-100ms"):
        assert rung in table
    assert table.index("random") < table.index("greedy") < table.index("gps-ld4-100ms")


def test_a_searching_checkpoint_names_its_budget_in_tables_and_records(checkpoints: list[Path],
                                                                        tmp_path: Path) -> None:
    done = keisei_eval("--checkpoint", str(checkpoints[0]), "--visits", "16", "--opponent",
                       "greedy", "--opponent", f"checkpoint:{checkpoints[1]}@50ms", "--games", "2",
                       "--max-plies", "40", "--set", "search.policy_temperature=1.5",
                       "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    name = f"{checkpoints[0].stem} (16 visits, policy_temperature=1.5)"
    assert f"{name} against:" in done.stdout and f"{checkpoints[1].stem} (50 ms)" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["player"] == name and results["search"] == {
        "visits": 16, "movetime_ms": None, "settings": ["search.policy_temperature=1.5"]}
    assert {game["black"] for game in results["games"]} >= {name}
    assert [opponent["movetime_ms"] for opponent in results["opponents"]] == [None, 50]


def test_opponent_set_gives_a_searching_opponent_its_settings(checkpoints: list[Path],
                                                              tmp_path: Path) -> None:
    done = keisei_eval("--checkpoint", str(checkpoints[0]), "--opponent", "greedy",
                       "--opponent", f"checkpoint:{checkpoints[1]}@8", "--games", "2",
                       "--max-plies", "40", "--opponent-set", "search.policy_temperature=1.5",
                       "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    name = f"{checkpoints[1].stem} (8 visits, policy_temperature=1.5)"
    assert name in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    greedy, searching = results["opponents"]
    assert greedy["search_settings"] == [] and greedy["name"] == "greedy"
    assert searching["name"] == name
    assert searching["search_settings"] == ["search.policy_temperature=1.5"]
    assert results["search"]["settings"] == []  # the evaluated checkpoint's own are apart


def test_a_bad_search_budget_is_one_clear_line(checkpoints: list[Path], tmp_path: Path) -> None:
    for args, message in ((["--visits", "0"], "--visits must be at least 1"),
                          (["--opponent", f"checkpoint:{checkpoints[1]}@fast"], "search budget 'fast'"),
                          (["--set", "search.c_puct=2"], "give --visits or --movetime"),
                          (["--visits", "8", "--set", "train.learning_rate=1"],
                           "only search.KEY=VALUE settings apply to a search"),
                          (["--visits", "8", "--set", "search.policy_temperature=0"],
                           "search.policy_temperature = 0.0: out of range"),
                          (["--visits", "8", "--set", "search.c_pucct=2"], "search.c_pucct: unknown key"),
                          (["--opponent-set", "search.c_puct=2"], "applies to a searching opponent"),
                          (["--opponent", f"checkpoint:{checkpoints[1]}@8", "--opponent-set",
                            "search.c_pucct=2"], "search.c_pucct: unknown key")):
        extra = [] if "--opponent" in args else ["--opponent", "random"]
        done = keisei_eval("--checkpoint", str(checkpoints[0]), *args, *extra, "--output",
                           str(tmp_path))
        assert done.returncode == 2 and message in done.stderr, done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_keeps_the_finished_opponents_even_started_with_sigint_ignored(
        checkpoints: list[Path], tmp_path: Path, signum: int) -> None:
    """As a shell's background job starts it (SIGINT ignored): the opponent played to the
    end keeps its games and results, the one in progress is named as not played, exit 130."""
    output = tmp_path / "out"
    evaluation = start_with_sigint_ignored(
        [str(BIN / "keisei-eval"), "--checkpoint", str(checkpoints[0]), "--opponent", "random",
         "--opponent", f"checkpoint:{checkpoints[1]}@5000", "--games", "2", "--max-plies", "60",
         "--output", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def in_the_second_match() -> bool:
        if not (output / "random").is_dir():
            return False
        time.sleep(0.5)  # into the second match, 5 000 visits a move: it lasts long enough
        return True

    out, err = signal_when(evaluation, in_the_second_match, signum, timeout=120)
    assert evaluation.returncode == 130, err
    assert "interrupted; not played to the end: " in err and "(5000 visits)" in err.splitlines()[-1]
    results = json.loads((output / "results.json").read_text())
    assert results["interrupted"] is True and len(results["unplayed"]) == 1
    assert [opponent["name"] for opponent in results["opponents"]] == ["random"]
    assert [pairing["second"] for pairing in results["pairings"]] == ["random"]
    assert {game["opponent"] for game in results["games"]} == {"random"}
    assert "random" in out
