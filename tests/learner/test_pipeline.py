"""keisei-pipeline: its arguments, its state file, and each phase resumed after an interrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from keisei.config import load_config
from keisei.rundir import RunDir
from learner.pipeline import (
    BESIDE_SEED,
    ON_START,
    RECORDS_BESIDE,
    Companion,
    Runner,
    State,
    build_parser,
    engine_games_beside,
    generator_beside,
    main,
    make_plan,
    selfplay,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "display.mode=plain",
        "run.threads=1", "selfplay.games=8", "selfplay.max_plies=64", "selfplay.search_visits=4",
        "train.steps_per_epoch=256", "evaluation.every_epochs=0", "checkpoint.every_epochs=1",
        "pretrain.batch_size=64", "pretrain.validate_every=2048", "pretrain.epochs=1000"]


def test_settings_go_to_the_commands_that_read_their_section() -> None:
    args = build_parser().parse_args(["runs/p", "--set", "model.blocks=2", "--set",
                                      "pretrain.batch_size=64", "--set", "train.ppo_passes=1",
                                      "--set", "search.c_puct=2"])
    plan, problems = make_plan(args)
    assert plan is not None and problems == []
    assert plan.pretrain_sets == ["model.blocks=2", "pretrain.batch_size=64"]
    assert plan.selfplay_sets == ["model.blocks=2", "train.ppo_passes=1", "search.c_puct=2"]
    assert plan.phases == ["generate", "pretrain", "selfplay", "evaluate"]
    assert plan.opponents == ["gnushogi:3"]


@pytest.mark.parametrize(("argv", "named"), [
    (["--phases", "generate,train"], "--phases: train"),
    (["--selfplay-minutes", "0"], "--selfplay-minutes must be more than 0"),
    (["--set", "run.dir=elsewhere"], "--set run.dir: the pipeline sets it"),
    (["--set", "train.minutes=5"], "--set train.minutes: the pipeline sets it"),
    (["--set", "blocks=2"], "expected SECTION.KEY=VALUE"),
    (["--games", "0"], "--games must be at least 1"),
    (["--set", "train.learning_rat=0.1"], "train.learning_rat"),
    (["--set", "pretrain.batch_size=0"], "pretrain.batch_size"),
])
def test_bad_arguments_are_refused_by_name(argv: list[str], named: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "p"), *argv]) == 2
    assert named in capsys.readouterr().err


def test_a_missing_engine_is_named_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "p"), "--engine", "usi:no-such-engine-here"]) == 2
    assert "no-such-engine-here is not installed" in capsys.readouterr().err
    assert not (tmp_path / "p" / "records").exists()


def test_a_state_file_that_is_not_one_is_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline.json").write_text("[1, 2")
    assert main([str(tmp_path / "p"), "--engine", "greedy", "--opponent", "random"]) == 2
    assert "is not a pipeline state file" in capsys.readouterr().err
    assert (tmp_path / "p" / "pipeline.json").read_text() == "[1, 2"  # left as it was


def test_the_on_start_config_file_holds_the_pipelines_settings() -> None:
    from_file = load_config(ROOT / "configs" / "on-start.toml", []).to_dict()
    from_pipeline = load_config(None, list(ON_START)).to_dict()
    for config in (from_file, from_pipeline):
        config["train"].pop("total_steps")  # the file's own budget; the pipeline's is minutes
    assert from_file == from_pipeline


def test_a_pretrained_starts_engine_games_are_trained_beside_self_play(tmp_path: Path) -> None:
    run = tmp_path / "pretrain"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "checkpoint-000000001024.pt"
    assert engine_games_beside(run) == [] and engine_games_beside(checkpoint) == []
    (run / "data").mkdir()
    (run / "data" / "dataset.json").write_text("{}")
    for start in (run, checkpoint):
        settings = engine_games_beside(start)
        assert settings[0] == f"train.supervised_data={run / 'data'}"
        config = load_config(None, [*ON_START, *settings])
        assert config.train.supervised_data == str(run / "data")
        assert config.train.value_anchor_coef == 0


class _Recorder(Runner):
    """Records what a phase would run instead of running it."""

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.calls: list[tuple[list[str], Companion | None]] = []

    def run(self, name: str, command: list[str], companion: Companion | None = None) -> int:
        self.calls.append((command, companion))
        return 0


def _setting(command: list[str], key: str) -> list[str]:
    """The values ``command`` passes for ``key`` with --set, in order."""
    return [word.split("=", 1)[1] for word in command if word.startswith(key + "=")]


def test_self_play_makes_engine_games_beside_it_on_a_core_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    args = build_parser().parse_args([str(tmp_path / "p"), "--engine", "usi:engine -x",
                                      "--engine-depth", "3", "--beside-workers", "1"])
    plan, problems = make_plan(args)
    assert plan is not None and problems == []
    runner = _Recorder(State(tmp_path / "state.json"))
    assert selfplay(plan, runner) == 0 and selfplay(plan, runner) == 0
    records = tmp_path / "p" / RECORDS_BESIDE
    assert records.is_dir()  # the learner refuses a folder that is not there
    seeds = []
    for learner, companion in runner.calls:
        assert _setting(learner, "train.supervised_records") == [str(records)]
        assert _setting(learner, "run.threads") == ["3"]  # the cores the generator leaves
        assert companion is not None and companion.log == records / "generate.log"
        generate = companion.command
        assert generate[1:3] == ["-m", "workers.generate"]
        assert generate[generate.index("--output") + 1] == str(records)
        assert generate[generate.index("--engine") + 1] == "usi:engine -x"
        assert generate[generate.index("--depth") + 1] == "3"
        assert generate[generate.index("--workers") + 1] == "1"
        assert float(generate[generate.index("--minutes") + 1]) == pytest.approx(20.0)
        seeds.append(int(generate[generate.index("--seed") + 1]))
    # every start makes new games, none of them the generate phase's (seeds 0, 1, 2, ...)
    assert seeds == [BESIDE_SEED + 1, BESIDE_SEED + 2]


def test_a_users_threads_and_no_beside_workers_are_respected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert build_parser().parse_args(["p"]).beside_workers == 1  # the default on two cores
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert build_parser().parse_args(["p"]).beside_workers == 0  # none on one
    for argv, threads, companion in ((["--set", "run.threads=2"], ["1", "2"], True),
                                     (["--beside-workers", "0"], [], False)):
        plan, _ = make_plan(build_parser().parse_args(
            [str(tmp_path / "p"), "--beside-workers", "1", *argv]))
        assert plan is not None
        runner = _Recorder(State(tmp_path / "state.json"))
        selfplay(plan, runner)
        learner, beside = runner.calls[0]
        assert _setting(learner, "run.threads") == threads  # the last one given wins
        assert (beside is not None) == companion
        assert bool(_setting(learner, "train.supervised_records")) == companion
    assert main([str(tmp_path / "q"), "--beside-workers", "-1"]) == 2


def test_a_missing_beside_engine_is_named_before_self_play_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "p"), "--phases", "selfplay", "--engine", "usi:no-such-engine",
                 "--beside-workers", "1"]) == 2
    assert "no-such-engine is not installed" in capsys.readouterr().err


def test_the_companion_is_stopped_when_the_phase_command_ends(tmp_path: Path) -> None:
    runner = Runner(State(tmp_path / "pipeline.json"))
    sleeper = [sys.executable, "-c", "import os, time; print(os.getpid(), 'generating with', "
               "flush=True); time.sleep(60)"]
    code = runner.run("selfplay", [sys.executable, "-c", "import time; time.sleep(1.5)"],
                      Companion(sleeper, tmp_path / "beside.log"))
    assert code == 0 and runner.companion is None and runner.child is None
    pid = int((tmp_path / "beside.log").read_text().split()[0])  # its output went to its log
    assert not psutil.pid_exists(pid)
    assert _phase(tmp_path, "selfplay")["seconds"] >= 1.5  # type: ignore[operator]


def test_a_generator_stopped_as_soon_as_it_is_started_stops_cleanly(tmp_path: Path) -> None:
    """Stopped while still importing, it would leave a traceback and no summary; it is
    given the time to start first."""
    command = [sys.executable, "-m", "workers.generate", "--engine", "greedy", "--workers", "1",
               "--minutes", "10", "--output", str(tmp_path)]
    with generator_beside(command, tmp_path) as process:
        pass
    assert process.returncode == 0
    log = (tmp_path / "generate.log").read_text()
    assert "generating with greedy" in log and "Traceback" not in log, log
    assert json.loads((tmp_path / "summary.json").read_text())["engine"] == "greedy"


def _pipeline(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "learner.pipeline", str(run_dir), "--engine", "greedy",
            "--generate-minutes", "0.2", "--pretrain-minutes", "0.3", "--selfplay-minutes",
            "0.3", "--opponent", "random", "--opponent", "greedy", "--games", "2", "--visits",
            "0", "--workers", "1", *[word for item in TINY for word in ("--set", item)], *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _interrupt_when(process: subprocess.Popen[str], ready: Callable[[], bool]) -> str:
    """SIGINT the pipeline once ``ready()``; its output (it must exit 130)."""
    deadline = time.monotonic() + 240
    while not ready():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the phase never got going"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 130, output
    return output


def _phase(run_dir: Path, name: str) -> dict[str, object]:
    state = json.loads((run_dir / "pipeline.json").read_text())
    return dict(state["phases"].get(name, {}))


def test_children_take_sigint_even_where_the_pipeline_ignores_it(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Started as a background job (SIGINT ignored), the pipeline still stops its phases
    with the SIGINT it passes on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner = Runner(State(tmp_path / "pipeline.json"))
        show = "import signal; print('child', signal.getsignal(signal.SIGINT).__name__)"
        assert runner.run("selfplay", [sys.executable, "-c", show]) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "child default_int_handler" in capfd.readouterr().out


def _running(text: str) -> list[int]:
    """The processes whose command line mentions ``text``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in word for word in process.info["cmdline"] or []):
            found.append(process.pid)
    return found


def _games(run_dir: Path) -> int:
    return sum(path.read_text().count("V2.2\n") for path in (run_dir / "records").glob("games-*.csa"))


@pytest.mark.e2e
def test_each_phase_continues_after_an_interrupt(tmp_path: Path) -> None:
    run_dir = tmp_path / "p"
    # generate: interrupted once games are written; the rerun appends for the time left
    process = _pipeline(run_dir)
    try:
        _interrupt_when(process, lambda: _games(run_dir) > 20)
        first = _phase(run_dir, "generate")
        assert first["done"] is False and 0 < float(first["seconds"]) < 10  # type: ignore[arg-type]
        kept = _games(run_dir)
        # pretrain: interrupted after its second checkpoint; the rerun resumes it
        process = _pipeline(run_dir)
        pretrain = RunDir(run_dir / "pretrain")
        output = _interrupt_when(process, lambda: len(list(pretrain.checkpoints.glob("*.pt"))) >= 2)
        assert "--seed 1" in output  # new games, appended to the kept ones
        assert _phase(run_dir, "generate")["done"] is True and _games(run_dir) > kept
        newest = pretrain.newest_checkpoint()
        assert newest is not None and _phase(run_dir, "pretrain")["done"] is False
        # selfplay: interrupted after its second checkpoint; the rerun resumes it
        process = _pipeline(run_dir)
        selfplay = RunDir(run_dir / "selfplay")
        output = _interrupt_when(process, lambda: len(list(selfplay.checkpoints.glob("*.pt"))) >= 2)
        assert "generate: done before; skipped" in output
        assert "-m pretrain.main --resume" in output
        assert _phase(run_dir, "pretrain")["done"] is True
        assert "--init-from" in output
        # engine games made beside self-play, into their own folder, read as they come
        beside = str(run_dir / RECORDS_BESIDE)
        assert f"--seed {BESIDE_SEED + 1} --output {beside}" in output
        assert f"train.supervised_records={beside}" in output
        assert "workers.generate beside it exited" in output
        assert not _running(beside)  # reaped with the phase
        interrupted_at = json.loads(selfplay.status.read_text())["step"]
        # evaluate: interrupted once the first opponent has its result
        process = _pipeline(run_dir)
        output = _interrupt_when(
            process, lambda: (run_dir / "eval" / "random" / "results.json").is_file())
        assert "-m learner.main --resume" in output
        assert f"--seed {BESIDE_SEED + 2} --output {beside}" in output  # new games on resume
        assert "engine games beside:" in output
        assert not _running(beside)
        status = json.loads(selfplay.status.read_text())
        assert status["state"] == "finished" and status["step"] > interrupted_at
        assert status["train_seconds"] >= 0.3 * 60
        # the last run plays only what has no result, and ends with the summary
        process = _pipeline(run_dir)
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output
        assert "--opponent random" not in output
        assert "keisei vs greedy:" in output and "keisei vs random:" in output
        assert "Play the network: keisei-play" in output
        state = json.loads((run_dir / "pipeline.json").read_text())
        assert all(state["phases"][name]["done"] for name in state["phases"])
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_done_phase_whose_folder_was_deleted_runs_again(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "p"
    run_dir.mkdir()
    (run_dir / "pipeline.json").write_text(json.dumps(
        {"phases": {"generate": {"done": True, "seconds": 60.0, "attempts": 1}}}))
    assert main([str(run_dir), "--phases", "generate", "--engine", "greedy",
                 "--generate-minutes", "0.02", "--workers", "1"]) == 0
    assert "generate: its folder is gone; it runs again" in capfd.readouterr().out
    assert list((run_dir / "records").glob("games-*.csa"))
    phase = _phase(run_dir, "generate")
    assert phase["done"] is True and phase["attempts"] == 1
    assert main([str(run_dir), "--phases", "generate", "--engine", "greedy"]) == 0
    assert f"generate: done before; skipped (delete {run_dir / 'records'}" in capfd.readouterr().out
