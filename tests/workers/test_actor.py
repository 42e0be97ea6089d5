"""What an actor accepts from a learner: weights that play, settings that fit."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import workers.actor as actor_module
from keisei.config import ModelConfig, SelfPlayConfig
from keisei.model import PRESETS, build_model
from keisei.protocol import Weights
from keisei.selfplay import Collector
from workers.actor import (
    Actor,
    LearnerRejected,
    check_memory,
    first_endpoint,
    parse_args,
    split_endpoints,
)


@pytest.fixture
def actor() -> Iterator[Actor]:
    made = Actor("tcp://127.0.0.1:1", "test", None, "cpu", "float32", 4, threading.Event())
    made.collector = Collector(build_model(PRESETS["tiny"]), SelfPlayConfig(games=2), made)
    yield made
    made.close()


def weights_like(model: torch.nn.Module, fill: float | None, version: int) -> Weights:
    tensors = {}
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().copy()
        if fill is not None and array.dtype == np.float32:
            array[...] = fill
        tensors[name] = array
    return Weights(version, tensors)


def test_weights_that_play_are_loaded_and_huge_finite_ones_are_refused(actor: Actor) -> None:
    assert actor.collector is not None
    model = actor.collector.model
    good = build_model(PRESETS["tiny"])
    assert actor._load_weights(weights_like(good, None, 3)) and actor.policy_version == 3
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert not actor._load_weights(weights_like(model, 3e38, 4))  # finite, but the net overflows
    assert actor.policy_version == 3
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert actor.collector.step(actor.policy_version) >= 0  # and it still plays


def test_settings_beyond_this_machines_memory_are_refused_clearly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    check_memory(ModelConfig(), SelfPlayConfig())  # the defaults fit anywhere
    monkeypatch.setattr(actor_module.psutil, "virtual_memory",
                        lambda: SimpleNamespace(available=2 * 2**30))
    with pytest.raises(LearnerRejected, match=r"need about [0-9.]+ GiB; this machine has 2.0 GiB"):
        check_memory(ModelConfig(blocks=40, channels=512), SelfPlayConfig(games=4096, max_plies=10_000))


def test_an_actor_gives_up_on_a_learner_silent_for_give_up_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actor_module, "HANDSHAKE_SECONDS", 0.2)
    never = Actor("tcp://127.0.0.1:1", "test", None, "cpu", "float32", 4, threading.Event())
    never.last_heard -= 3600  # an hour without a learner: without give_up_after it retries on
    finished = threading.Event()
    waiting = threading.Thread(target=lambda: (never.run(), finished.set()), daemon=True)
    waiting.start()
    assert not finished.wait(1.0)
    never.stop.set()
    waiting.join(10)
    never.close()
    patient = Actor("tcp://127.0.0.1:1", "test", None, "cpu", "float32", 4, threading.Event(),
                    give_up_after=0.5)
    try:
        patient.run()  # returns by itself once nothing has answered for 0.5 s
        assert not patient.stop.is_set()
    finally:
        patient.close()


def test_a_signal_ends_an_actor_with_130_for_restart_policies() -> None:
    process = subprocess.Popen([sys.executable, "-m", "workers.actor", "--learner", "tcp://127.0.0.1:1"],
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert process.stderr is not None
        for line in process.stderr:  # its handlers are in place once it is retrying
            if "does not answer" in line:
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_list_of_rank_endpoints_is_read_checked_and_spread(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert split_endpoints("tcp://a:5555, tcp://a:5557,") == ["tcp://a:5555", "tcp://a:5557"]
    assert parse_args(["--learner", "tcp://a:5555,tcp://b:5557"]).learner == "tcp://a:5555,tcp://b:5557"
    with pytest.raises(SystemExit):
        parse_args(["--learner", "tcp://a:5555,b:5557"])
    assert "--learner 'tcp://a:5555,b:5557': expected tcp://HOST:PORT, or a comma-separated" \
        in capsys.readouterr().err
    picks = [first_endpoint(f"host-{index}", 2) for index in range(1000)]
    assert 400 < picks.count(0) < 600  # many actors spread evenly
    assert first_endpoint("host-7", 3) == first_endpoint("host-7", 3)  # and keep their rank


def test_an_actor_tries_the_next_rank_when_one_does_not_answer(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(actor_module, "HANDSHAKE_SECONDS", 0.2)
    nowhere = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:3"]
    patient = Actor(",".join(nowhere), "test", None, "cpu", "float32", 4, threading.Event(),
                    give_up_after=2.5)
    first = patient.endpoint_index
    try:
        with caplog.at_level("WARNING"):
            patient.run()
    finally:
        patient.close()
    assert f"learner {nowhere[first]} does not answer; trying {nowhere[1 - first]}" in caplog.text
    assert f"learner {nowhere[1 - first]} does not answer; trying {nowhere[first]}" in caplog.text


def test_an_actor_that_has_decided_its_exit_ignores_a_late_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python gives SIGTERM its default action back while the interpreter shuts down: a
    # SIGTERM then (Compose stopping the stack as the learner exits) would end the actor
    # with 143 instead of its own code, unless the signal is ignored by then.
    monkeypatch.setattr(actor_module, "HANDSHAKE_SECONDS", 0.2)
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = actor_module.main(["--learner", "tcp://127.0.0.1:1", "--give-up-after", "0.5"])
        assert code == 0
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_a_niceness_outside_0_to_19_is_refused_and_the_environment_gives_the_default(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--learner", "tcp://a:5555"]).nice == 0
    assert parse_args(["--learner", "tcp://a:5555", "--nice", "19"]).nice == 19
    with pytest.raises(SystemExit):
        parse_args(["--learner", "tcp://a:5555", "--nice", "20"])
    assert "--nice 20: expected 0..19" in capsys.readouterr().err
    monkeypatch.setenv("KEISEI_ACTOR_NICE", "7")
    assert parse_args(["--learner", "tcp://a:5555"]).nice == 7
