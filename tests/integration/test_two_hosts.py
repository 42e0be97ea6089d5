"""An actor on a second host: two network namespaces joined by a veth pair.

The learner binds only its namespace's address; the actor reaches it across the veth
link. Skipped, with the reason, where namespaces cannot be created (not root, no
iproute2, or a sandbox that forbids them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port_pair

LEARNER_ADDRESS = "10.231.77.1"
ACTOR_ADDRESS = "10.231.77.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = str(os.getpid() % 100_000)
    learner_ns, actor_ns = f"keisei-l{tag}", f"keisei-a{tag}"
    try:
        ip("netns", "add", learner_ns)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
    try:
        ip("netns", "add", actor_ns)
        ip("link", "add", f"kl{tag}", "type", "veth", "peer", "name", f"ka{tag}")
        ip("link", "set", f"kl{tag}", "netns", learner_ns)
        ip("link", "set", f"ka{tag}", "netns", actor_ns)
        for namespace, device, address in ((learner_ns, f"kl{tag}", LEARNER_ADDRESS),
                                           (actor_ns, f"ka{tag}", ACTOR_ADDRESS)):
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
            ip("-n", namespace, "link", "set", device, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
        yield learner_ns, actor_ns
    finally:
        for namespace in (learner_ns, actor_ns):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)


def test_actor_on_a_second_host_trains_the_learner(two_hosts: tuple[str, str], tmp_path: Path) -> None:
    learner_ns, actor_ns = two_hosts
    endpoint = f"tcp://{LEARNER_ADDRESS}:{free_port_pair()}"
    settings = ["model.blocks=1", "model.channels=16", "selfplay.games=8", "selfplay.max_plies=64",
                "train.steps_per_epoch=256", "train.minibatch_size=64", "train.ppo_passes=1",
                "train.total_steps=768", "run.threads=1", "display.mode=plain",
                f"run.dir={tmp_path / 'run'}"]
    learner_command = ["ip", "netns", "exec", learner_ns, sys.executable, "-m", "learner.main",
                       "--remote-actors", "--bind", endpoint]
    for setting in settings:
        learner_command += ["--set", setting]
    actor_command = ["ip", "netns", "exec", actor_ns, sys.executable, "-m", "workers.actor",
                     "--learner", endpoint, "--actor-id", "second-host"]
    learner = subprocess.Popen(learner_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    actor = subprocess.Popen(actor_command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        learner_output, _ = learner.communicate(timeout=240)
        actor_output, _ = actor.communicate(timeout=60)
    finally:
        for process in (learner, actor):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert learner.returncode == 0, learner_output[-3000:]
    assert actor.returncode == 0, actor_output[-3000:]
    assert "learner asked to shut down" in actor_output
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 768 and lines[-1]["mode"] == "distributed"
    remote = [actor for actor in lines[-1]["actors"] if actor["actor_id"] == "second-host"]
    assert remote and remote[0]["steps_received"] > 0
