"""keisei-learner's exit codes for what goes wrong outside the training maths."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port_pair

import keisei.runs as runs
from learner.main import main

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "selfplay.games=8",
        "selfplay.max_plies=48", "train.steps_per_epoch=128", "train.minibatch_size=64",
        "train.ppo_passes=1", "run.threads=1", "checkpoint.every_epochs=1", "display.mode=plain",
        "evaluation.every_epochs=0", "train.total_steps=512"]


def arguments(run_dir: Path, *extra: str) -> list[str]:
    return [item for override in [*TINY, f"run.dir={run_dir}", *extra] for item in ("--set", override)]


def test_a_full_disk_stops_training_with_one_line_and_exit_code_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    real = runs.save_checkpoint

    def full_after_the_first(directory, step, state, keep):  # type: ignore[no-untyped-def]
        if step > 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(directory, step, state, keep)

    monkeypatch.setattr(runs, "save_checkpoint", full_after_the_first)
    assert main(arguments(tmp_path / "run")) == 1
    err = capfd.readouterr().err
    assert "training stopped at step 128: [Errno 28] No space left on device" in err
    assert "--resume continues from" in err and "checkpoint-000000000000.pt" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:65535", "tcp://127.0.0.1",
                                  "ipc:///tmp/x"])
def test_a_bind_address_without_a_usable_port_pair_is_refused(
        bind: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main([*arguments(tmp_path / "run"), "--remote-actors", "--bind", bind]) == 2
    assert "--bind" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_run_that_cannot_bind_exits_2_and_leaves_the_directory_free(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    port = free_port_pair()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        assert main([*arguments(tmp_path / "run", "train.total_steps=128"), "--remote-actors",
                     "--bind", f"tcp://127.0.0.1:{port}"]) == 2
    assert "cannot bind" in capfd.readouterr().err
    assert main(arguments(tmp_path / "run", "train.total_steps=128")) == 0  # a new run, same folder


def test_a_finished_run_says_so_and_its_status_exits_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main(arguments(run_dir, "train.total_steps=128")) == 0
    status = json.loads((run_dir / "status.json").read_text())  # written at exit, no actors
    assert (status["state"], status["step"], status["total_steps"]) == ("finished", 128, 128)
    assert status["actors"] == [] and status["ended"] <= time.time()
    capsys.readouterr()
    assert main(["--status", "--set", f"run.dir={run_dir}"]) == 0  # however old: it finished
    assert f"{run_dir}: finished at step 128 of 128" in capsys.readouterr().out
    assert main(["--status", str(run_dir)]) == 0  # the run folder as an argument, as keisei-web
    assert f"{run_dir}: finished at step 128 of 128" in capsys.readouterr().out
    status["state"] = "interrupted"
    (run_dir / "status.json").write_text(json.dumps(status))
    assert main(["--status", "--set", f"run.dir={run_dir}"]) == 1
    printed = capsys.readouterr()
    assert "was interrupted at step 128" in printed.out and "--resume" in printed.err


def test_train_minutes_ends_a_run_as_finished_and_counts_across_resumes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    # a budget shorter than one epoch: the run ends, finished, after its first epoch
    assert main(arguments(run_dir, "train.minutes=0.0001")) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["step"], status["total_steps"]) == ("finished", 128, 512)
    assert status["minutes"] == 0.0001 and status["train_seconds"] > 0
    capsys.readouterr()
    assert main(["--status", str(run_dir)]) == 0
    assert "its train.minutes = 0.0001 reached after" in capsys.readouterr().out
    # resumed with the same budget, the time already trained counts: no epoch more
    assert main(["--resume", "--set", f"run.dir={run_dir}"]) == 0
    assert json.loads((run_dir / "status.json").read_text())["step"] == 128
    # a larger budget carries on from there
    assert main(["--resume", "--set", f"run.dir={run_dir}", "--set", "train.minutes=60"]) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["state"], status["step"]) == ("finished", 512)


def test_the_status_health_check_does_not_import_torch(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    status = {"mode": "distributed", "step": 4096, "epoch": 2, "policy_version": 2, "pid": 1,
              "time": time.time(), "actors": [], "transitions": []}
    (run_dir / "status.json").write_text(json.dumps(status))
    script = ("import sys; from learner.main import main; "
              f"code = main(['--status', '--set', 'run.dir={run_dir}']); "
              "print('torch' in sys.modules, code)")
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60)
    assert answer.stdout.splitlines()[-1] == "False 0", answer.stdout + answer.stderr
    assert "mode distributed, step 4096" in answer.stdout
    status["time"] = time.time() - 3600  # a learner that stopped answering
    (run_dir / "status.json").write_text(json.dumps(status))
    stale = subprocess.run([sys.executable, "-m", "learner.main", "--status", "--set",
                            f"run.dir={run_dir}"], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "not responding" in stale.stderr
    (run_dir / "status.json").unlink()  # no learner has written one: unhealthy, not Docker's reserved 2
    missing = subprocess.run([sys.executable, "-m", "learner.main", "--status", "--set",
                              f"run.dir={run_dir}"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no readable status" in missing.stderr


class FakeWandb:
    """What the learner asks of the wandb package, recorded."""

    def __init__(self) -> None:
        self.inits: list[dict[str, Any]] = []
        self.logged: list[dict[str, Any]] = []
        self.artifacts: list[Any] = []
        self.finished = 0
        outer = self

        class Run:
            name = "run"

            def define_metric(self, *args: Any, **kwargs: Any) -> None:
                pass

            def log(self, values: dict[str, Any]) -> None:
                outer.logged.append(values)

            def log_artifact(self, artifact: Any) -> None:
                outer.artifacts.append(artifact)

            def finish(self) -> None:
                outer.finished += 1

        class Artifact:
            def __init__(self, name: str, type: str, metadata: dict[str, Any]) -> None:  # noqa: A002
                self.name, self.type, self.metadata, self.files = name, type, metadata, []

            def add_file(self, path: str) -> None:
                self.files.append(path)

        self.Artifact, self.Table, self._run = Artifact, dict, Run()

    def init(self, **kwargs: Any) -> Any:
        self.inits.append(kwargs)
        return self._run


def test_wandb_gets_the_metrics_config_and_final_checkpoint_and_resume_continues_its_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = tmp_path / "run"
    assert main(arguments(run_dir, "train.total_steps=128", "run.wandb_project=keisei-test")) == 0
    first = fake.inits[0]
    assert (first["project"], first["resume"], first["mode"], first["dir"]) == (
        "keisei-test", "allow", "online", str(run_dir))
    assert first["id"] == (run_dir / "wandb-id").read_text().strip()
    assert first["config"]["train"]["total_steps"] == 128
    assert first["config"]["metric_units"]["entropy"] == "nats"
    assert fake.logged[0]["step"] == 128 and "policy_loss" in fake.logged[0]
    assert all(isinstance(value, int | float) for value in fake.logged[0].values())
    [artifact] = fake.artifacts
    assert artifact.type == "model" and artifact.files[0].endswith("checkpoint-000000000128.pt")
    assert fake.finished == 1
    assert main([*arguments(run_dir, "train.total_steps=256", "run.wandb_project=keisei-test"),
                 "--resume"]) == 0
    assert fake.inits[1]["id"] == first["id"]  # the same W&B run goes on
    assert [values["step"] for values in fake.logged] == [128, 256]


def test_wandb_asked_for_but_not_installed_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert main(arguments(tmp_path / "run", "train.total_steps=128", "run.wandb_project=x")) == 2
    assert "pip install 'keisei[wandb]'" in capfd.readouterr().err


def test_wandb_offline_writes_its_run_under_the_run_directory(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    assert main(arguments(run_dir, "train.total_steps=128", "run.wandb_project=keisei-test",
                          "run.wandb_mode=offline")) == 0
    run_id = (run_dir / "wandb-id").read_text().strip()
    runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and list(runs[0].glob("run-*.wandb")), list((run_dir / "wandb").iterdir())


def test_help_shows_examples_and_help_config_the_settings_it_reads(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--status runs/mine" in text and len(text.splitlines()) < 80
    with pytest.raises(SystemExit) as exited:
        main(["--help-config"])
    listed = capsys.readouterr().out
    assert exited.value.code == 0 and "  train.learning_rate (float" in listed
    assert "pretrain." not in listed  # keisei-learner does not read [pretrain]


def test_a_setting_the_learner_does_not_read_is_refused(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(arguments(tmp_path / "run", "pretrain.minutes=3")) == 2
    assert "keisei-learner does not read [pretrain]" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_anchor_penalty_without_a_start_network_is_named_as_off(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(arguments(tmp_path / "run", "train.total_steps=128",
                          "train.value_anchor_coef=1", "train.init_kl_coef=0.5")) == 0
    err = capfd.readouterr().err
    assert "train.init_kl_coef = 0.5, train.value_anchor_coef = 1: no anchor" in err
    assert "they are off" in err and "--init-from" in err
    # the gated anchor holds the random start: no warning
    assert main(arguments(tmp_path / "gated", "train.total_steps=128", "train.init_kl_coef=0.5",
                          "train.kl_anchor=gated")) == 0
    assert "no anchor" not in capfd.readouterr().err


def _config(run_dir: Path) -> dict[str, Any]:
    with open(run_dir / "config.toml", "rb") as handle:
        return tomllib.load(handle)


def _generators() -> list[Any]:
    """This process's children that run keisei-generate."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "workers.generate" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    return found


def test_local_actors_beside_a_generator_share_the_cores_it_leaves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The generator's core is not the actors' to share: the learner's threads follow the
    actors within the cores the generator leaves, as they follow them without it."""
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    run_dir = tmp_path / "run"
    assert main([*arguments(run_dir, "run.threads=0", "train.total_steps=256"),
                 "--beside-workers", "1", "--beside-engine", "greedy", "--local-actors", "1",
                 "--bind", f"tcp://127.0.0.1:{free_port_pair()}"]) == 0
    assert _config(run_dir)["run"]["threads"] == 2
    log = capfd.readouterr().err
    assert "torch threads follow the 1 local actors: 1 while they play, 2 while they pause" in log
    assert not _generators()


def test_engine_games_beside_the_learner_start_with_it_stop_with_it_and_take_a_new_seed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    run_dir = tmp_path / "run"
    beside = ["--beside-workers", "1", "--beside-engine", "greedy"]
    assert main([*arguments(run_dir, "run.threads=0", "train.total_steps=256"), *beside]) == 0
    folder = run_dir / "records-beside"
    config = _config(run_dir)
    assert config["train"]["supervised_records"] == str(folder)
    assert config["run"]["threads"] == 2  # the cores the generator leaves
    log = (folder / "generate.log").read_text()
    # stopped after it had started, though the run took a second: cleanly, no traceback
    assert "generating with greedy on 1 process(es)" in log and "Traceback" not in log
    assert json.loads((folder / "summary.json").read_text())["games"] >= 0  # stopped cleanly
    assert not _generators()  # nothing left running
    # resumed, with its own threads: another seed, so the games appended are new games
    assert main(["--resume", "--set", f"run.dir={run_dir}", "--set", "train.total_steps=384",
                 "--set", "run.threads=1", *beside]) == 0
    assert json.loads((folder / "beside.json").read_text()) == {"starts": 2}
    assert _config(run_dir)["run"]["threads"] == 1
    assert not _generators()


def test_print_config_shows_the_settings_engine_games_beside_bring(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    run_dir = tmp_path / "run"
    assert main([*arguments(run_dir, "run.threads=0"), "--print-config", "--beside-workers", "1",
                 "--beside-engine", "greedy"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["train"]["supervised_records"] == str(run_dir / "records-beside")
    assert printed["run"]["threads"] == 3
    assert not run_dir.exists()  # printed, nothing made


def test_engine_games_beside_a_folder_of_the_users_choosing(tmp_path: Path) -> None:
    folder = tmp_path / "games"
    assert main([*arguments(tmp_path / "run", "train.total_steps=128",
                            f"train.supervised_records={folder}"),
                 "--beside-workers", "1", "--beside-engine", "greedy"]) == 0
    assert (folder / "generate.log").is_file() and not (tmp_path / "run" / "records-beside").exists()


@pytest.mark.parametrize(("extra", "named"), [
    (["--beside-workers", "-1"], "--beside-workers -1: must be 0 or more"),
    (["--beside-workers", "1", "--beside-engine", "usi:no-such-engine"],
     "--beside-engine usi:no-such-engine: engine program 'no-such-engine' is not on PATH"),
    (["--beside-workers", "1", "--beside-depth", "0"], "--beside-depth 0: must be 1 or more"),
    (["--beside-workers", "1", "--ranks", "2"], "--beside-workers with --ranks"),
    (["--beside-workers", "1", "--beside-engine", "greedy", "--set",
      "train.supervised_records=/proc/no-such/games"], "cannot make the games' folder"),
])
def test_engine_games_beside_the_learner_refuse_what_cannot_run(
        extra: list[str], named: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main([*arguments(tmp_path / "run"), *extra]) == 2
    assert named in capfd.readouterr().err
    assert not (tmp_path / "run").exists()
