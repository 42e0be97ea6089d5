"""keisei-pretrain end to end on small generated record sets, and the hand-over to PPO."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import greedy_games, learner_command, metrics_lines

from keisei.checkpoint import latest_checkpoint, load_checkpoint
from keisei.config import load_config
from keisei.dataset import ShardSet, decode_samples, prepare_dataset
from keisei.evaluation import load_policy
from pretrain.main import Pretrainer, main

TINY = ["model.blocks=1", "model.channels=16", "model.value_hidden=16", "run.threads=1",
        "display.mode=plain", "pretrain.batch_size=64", "pretrain.val_fraction=0.2",
        "pretrain.shard_size=512"]


def overrides(run_dir: Path, *extra: str) -> list[str]:
    arguments = ["--set", f"run.dir={run_dir}"]
    for item in (*TINY, *extra):
        arguments += ["--set", item]
    return arguments


def test_training_lowers_the_held_out_loss(tmp_path: Path) -> None:
    greedy_games(tmp_path / "records", 60)
    prepare_dataset([tmp_path / "records"], tmp_path / "data", val_fraction=0.2, max_duplicates=4,
                    shard_size=512)
    config = load_config(overrides=[*TINY, "pretrain.learning_rate=0.003"])
    trainer = Pretrainer(config, ShardSet(tmp_path / "data", "train"),
                         ShardSet(tmp_path / "data", "val"), threading.Event())
    before = trainer.validate()
    assert before.positions > 200
    for _ in range(3):
        for samples in trainer.epoch_batches():
            trainer.train_batch(samples)
        trainer.next_epoch()
    after = trainer.validate()
    policy_before, value_before, accuracy_before = before.means()
    policy_after, value_after, accuracy_after = after.means()
    assert policy_after < policy_before - 0.3, (policy_before, policy_after)
    assert accuracy_after > accuracy_before
    assert value_after < value_before, (value_before, value_after)


def test_the_command_writes_metrics_and_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    greedy_games(tmp_path / "records", 30)
    run_dir = tmp_path / "run"
    assert main([str(tmp_path / "records"), *overrides(run_dir, "pretrain.epochs=2")]) == 0
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [0.0, 1.0, 2.0]
    assert lines[0]["step"] == 0 and lines[-1]["val_positions"] > 0
    assert {"val_accuracy", "val_policy_loss", "val_value_loss", "train_accuracy",
            "positions_per_second", "learning_rate"} <= set(lines[-1])
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    state = load_checkpoint(checkpoint)
    assert state["counters"]["step"] == lines[-1]["step"]
    model, version = load_policy(checkpoint)  # what keisei-eval and keisei-usi load
    assert version == 0 and model.config.channels == 16
    # A new run over the same folder is refused; --resume with more epochs continues.
    assert main([str(tmp_path / "records"), *overrides(run_dir, "pretrain.epochs=2")]) == 2
    assert main(["--resume", *overrides(run_dir, "pretrain.epochs=3")]) == 0
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [0.0, 1.0, 2.0, 3.0]
    assert lines[3]["step"] == lines[2]["step"] + (lines[2]["step"] - lines[1]["step"])


def test_the_prior_heads_held_out_loss_is_its_own(tmp_path: Path) -> None:
    """model.prior_head: validation reports the prior head's cross-entropy. With its
    weights zeroed it gives every legal move the same probability, so its loss is, by hand,
    the mean log of the number of legal moves, whatever the policy head says."""
    greedy_games(tmp_path / "records", 20)
    prepare_dataset([tmp_path / "records"], tmp_path / "data", val_fraction=0.3, max_duplicates=0,
                    shard_size=512)
    config = load_config(overrides=[*TINY, "model.prior_head=true", "run.precision=float32"])
    val = ShardSet(tmp_path / "data", "val")
    trainer = Pretrainer(config, ShardSet(tmp_path / "data", "train"), val, threading.Event())
    assert trainer.model.prior_head is not None and trainer.model.prior_bias is not None
    with torch.no_grad():
        trainer.model.prior_head.weight.zero_()
        trainer.model.prior_bias.zero_()
        trainer.model.policy_bias.normal_(0.0, 3.0)  # a policy head far from uniform
    figures = trainer.validate()
    masks = decode_samples(np.concatenate(list(val.batches(512, None)))).legal_masks
    assert figures.positions == len(masks) > 50
    loss, _ = figures.prior_means()
    assert loss == pytest.approx(float(np.log(masks.sum(axis=1)).mean()), rel=1e-5)
    assert figures.means()[0] > loss + 1.0  # not the policy head's
    report = trainer.report(figures, 0.0)
    assert (report.val_prior_loss, report.val_prior_accuracy) == figures.prior_means()


def test_resume_mid_epoch_trains_the_same_batches(tmp_path: Path) -> None:
    greedy_games(tmp_path / "records", 20)
    prepare_dataset([tmp_path / "records"], tmp_path / "data", val_fraction=0.0, max_duplicates=0,
                    shard_size=256)
    config = load_config(overrides=TINY)
    sets = (ShardSet(tmp_path / "data", "train"), ShardSet(tmp_path / "data", "val"))
    whole = Pretrainer(config, *sets, threading.Event())
    order = [samples.copy() for samples in whole.epoch_batches()]
    first = Pretrainer(config, *sets, threading.Event())
    for index, samples in enumerate(first.epoch_batches()):
        first.train_batch(samples)
        if index == 2:
            break
    second = Pretrainer(config, *sets, threading.Event())
    second.load_state_dict(first.state_dict())
    rest = list(second.epoch_batches())
    assert len(rest) == len(order) - 3
    assert all(np.array_equal(left, right) for left, right in zip(rest, order[3:], strict=True))


def test_bad_input_gets_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(overrides(tmp_path / "run")) == 2
    assert "holds no data set" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), *overrides(tmp_path / "run")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "bad.csa").write_text("PI\n+\n+9999FU\n")
    assert main([str(tmp_path / "junk"), *overrides(tmp_path / "run2")]) == 2
    assert "no training position" in capsys.readouterr().err


def test_learner_starts_from_a_pretrained_checkpoint(tmp_path: Path) -> None:
    greedy_games(tmp_path / "records", 20)
    pre = tmp_path / "pre"
    shape = ["model.blocks=1", "model.channels=16", "model.value_hidden=16"]
    assert main([str(tmp_path / "records"), *overrides(pre, "pretrain.epochs=1")]) == 0
    checkpoint = latest_checkpoint(pre / "checkpoints")
    assert checkpoint is not None
    wrong = subprocess.run(learner_command(tmp_path / "wrong", "model.channels=32",
                                           "train.total_steps=128")
                           + ["--init-from", str(checkpoint)],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2
    assert "model.channels = 32 here but 16" in wrong.stderr
    run_dir = tmp_path / "ppo"
    done = subprocess.run(learner_command(run_dir, *shape, "train.total_steps=256",
                                          "train.init_kl_coef=0.5", "train.init_kl_steps=128")
                          + ["--init-from", str(checkpoint)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = metrics_lines(run_dir)
    assert [line["step"] for line in lines] == [128, 256]  # fresh counters
    assert lines[0]["init_kl_coef"] == 0.5 and lines[0]["init_kl"] >= 0
    assert lines[1]["init_kl_coef"] == 0.0 and lines[1]["init_kl"] is None
    start = load_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[0])
    assert start["counters"]["step"] == 0
    pretrained = load_checkpoint(checkpoint)["model"]
    assert all(np.array_equal(start["model"][key].numpy(), value.numpy())
               for key, value in pretrained.items())
    assert "reference_model" in start


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    greedy_games(tmp_path / "first", 20)
    greedy_games(tmp_path / "more", 20, seed=7)
    assert main([str(tmp_path / "first"), *overrides(tmp_path / "pre", "pretrain.epochs=1")]) == 0
    earlier = load_checkpoint(latest_checkpoint(tmp_path / "pre" / "checkpoints") or "")
    run_dir = tmp_path / "pre2"
    assert main([str(tmp_path / "more"), "--init-from", str(tmp_path / "pre"),
                 *overrides(run_dir, "pretrain.epochs=1")]) == 0
    lines = metrics_lines(run_dir)
    assert [line["epoch"] for line in lines] == [0.0, 1.0]  # fresh counters and schedule
    start = load_checkpoint(sorted((run_dir / "checkpoints").glob("*.pt"))[0])
    assert start["counters"]["step"] == 0
    assert all(np.array_equal(start["model"][key].numpy(), value.numpy())
               for key, value in earlier["model"].items())
    assert "starting from the network in" in capsys.readouterr().err
    # a start without a prior head gives one (model.prior_head) its policy head, which
    # the engine moves then train; the other way round is another network, refused
    split = tmp_path / "split"
    assert main([str(tmp_path / "more"), "--init-from", str(tmp_path / "pre"),
                 *overrides(split, "pretrain.epochs=1", "model.prior_head=true")]) == 0
    checkpoints = sorted((split / "checkpoints").glob("*.pt"))
    first, last = load_checkpoint(checkpoints[0])["model"], load_checkpoint(checkpoints[-1])["model"]
    assert np.array_equal(first["prior_head.weight"].numpy(), earlier["model"]["policy_head.weight"].numpy())
    assert np.array_equal(first["prior_bias"].numpy(), earlier["model"]["policy_bias"].numpy())
    assert not np.array_equal(last["prior_head.weight"].numpy(), first["prior_head.weight"].numpy())
    # the prior head's held-out figures: before training, a copy of the policy head's
    start_line = metrics_lines(split)[0]
    assert start_line["val_prior_loss"] == pytest.approx(start_line["val_policy_loss"], rel=1e-5)
    assert start_line["val_prior_accuracy"] == start_line["val_accuracy"]
    assert lines[0]["val_prior_loss"] is None and lines[0]["val_prior_accuracy"] is None
    assert main([str(tmp_path / "more"), "--init-from", str(split),
                 *overrides(tmp_path / "unsplit", "pretrain.epochs=1")]) == 2
    assert "model.prior_head = False here but True" in capsys.readouterr().err
    # another network shape, or no checkpoint there: refused before any work
    assert main([str(tmp_path / "more"), "--init-from", str(tmp_path / "pre"),
                 *overrides(tmp_path / "wrong", "model.channels=32")]) == 2
    assert "model.channels = 32 here but 16" in capsys.readouterr().err
    assert not (tmp_path / "wrong" / "data").exists()  # the records were not read
    assert main([str(tmp_path / "more"), "--init-from", str(tmp_path / "none.pt"),
                 *overrides(tmp_path / "wrong2")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "wrong2" / "data").exists()


def test_sigterm_stops_with_a_checkpoint_and_resume_goes_on(tmp_path: Path) -> None:
    greedy_games(tmp_path / "records", 30)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "pretrain.main", str(tmp_path / "records"),
               *overrides(run_dir, "pretrain.epochs=1000", "pretrain.batch_size=16")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(metrics_lines(run_dir)) < 2:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "no epoch within 120 s"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    stopped_at = load_checkpoint(checkpoint)["counters"]["step"]
    assert stopped_at >= metrics_lines(run_dir)[-1]["step"]
    resumed = subprocess.run([sys.executable, "-m", "pretrain.main", "--resume",
                              *overrides(run_dir, "pretrain.epochs=3", "pretrain.batch_size=16")],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = metrics_lines(run_dir)
    assert lines[-1]["epoch"] == 3.0 and lines[-1]["step"] > stopped_at


def test_a_setting_pretraining_does_not_read_is_refused_and_help_config_lists_its_own(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["x", "--set", f"run.dir={tmp_path / 'run'}", "--set", "wire.max_actors=3"]) == 2
    assert "keisei-pretrain does not read [wire]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help-config"])
    listed = capsys.readouterr().out
    assert "  pretrain.minutes (" in listed and "train." not in listed.replace("pretrain.", "")
