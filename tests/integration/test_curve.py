"""CurveZMQ: actors with an authorised key get in; others are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers import free_port_pair, wait_for

from keisei.config import load_config
from keisei.protocol import generate_keys, keys_main
from learner.app import Learner, LearnerOptions


def actor(bind: str, keys: Path, actor_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "workers.actor", "--learner", bind, "--actor-id",
                             actor_id, "--curve-keys", str(keys)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_only_authorised_actors_are_served(tmp_path: Path) -> None:
    learner_keys = generate_keys(tmp_path / "keys")
    stranger_keys = generate_keys(tmp_path / "stranger")  # a valid key pair the learner never saw
    config = load_config(None, ["model.blocks=1", "model.channels=16", "selfplay.games=4",
                                "selfplay.max_plies=32", f"run.dir={tmp_path / 'run'}",
                                "display.mode=plain", "evaluation.every_epochs=0"])
    bind = f"tcp://127.0.0.1:{free_port_pair()}"
    shutil.copy(learner_keys / "server.key", stranger_keys / "server.key")  # it knows the server
    options = LearnerOptions(remote_actors=True, bind=bind, curve_keys=str(learner_keys), threads=1)
    with Learner(config, options) as learner:
        trusted, stranger = actor(bind, learner_keys, "trusted"), actor(bind, stranger_keys, "stranger")
        try:
            wait_for(lambda: learner.actors.known("trusted") and learner.trainer.buffer.size > 0, 60,
                     "the authorised actor to join and deliver games")
            time.sleep(2)
            assert not learner.actors.known("stranger")
        finally:
            for process in (trusted, stranger):
                process.terminate()
                process.wait(timeout=20)
    assert "does not answer" in (stranger.stdout.read() if stranger.stdout else "")


def test_keys_command_refuses_to_overwrite(tmp_path: Path) -> None:
    assert keys_main([str(tmp_path / "k")]) == 0
    assert (tmp_path / "k" / "authorized" / "actor.key").exists()
    assert keys_main([str(tmp_path / "k")]) == 2
