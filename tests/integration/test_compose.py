"""docker-compose.yml cannot drift from the code: its services run here as processes.

Docker is not available on the test machine, so this starts the learner and the actor
replicas with exactly the commands and environment variables the compose file gives
them, from a directory laid out like the image's /app. The one substitution is the
network: the compose host names (``learner``, ``0.0.0.0``) become 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def service(compose: dict, name: str) -> tuple[list[str], dict[str, str]]:
    spec = compose["services"][name]
    command = list(spec["command"])
    command[0] = str(BIN / command[0])  # the console script installed beside this Python
    environment = {key: re.sub(r"(//|^)(learner|0\.0\.0\.0):", r"\g<1>127.0.0.1:", str(value))
                   for key, value in spec.get("environment", {}).items()}
    return command, {**os.environ, **environment}


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_dockerfile_ships_every_package_and_config() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for folder in ("keisei", "learner", "workers", "configs"):
        assert re.search(rf"^COPY {folder} ", dockerfile, re.MULTILINE), folder
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["learner"]["expose"] == ["5555", "5556"]
    # the ZeroMQ ports on the compose network only; the web view on the host's loopback only
    assert compose["services"]["learner"]["ports"] == ["127.0.0.1:${KEISEI_WEB_PORT:-8080}:8080"]
    assert compose["services"]["learner"]["environment"]["KEISEI_WEB"] == "0.0.0.0:8080"
    assert compose["services"]["actor"]["deploy"]["replicas"] >= 1


def test_the_pipeline_profile_runs_keisei_pipeline_with_its_engines() -> None:
    """The ``pipeline`` profile: the image has the engines its default phases call, its
    command is a valid keisei-pipeline command line, the web view is on loopback only."""
    from learner.pipeline import build_parser, make_plan

    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["pipeline"]
    assert spec["profiles"] == ["pipeline"] and spec["command"][0] == "keisei-pipeline"
    plan, problems = make_plan(build_parser().parse_args(spec["command"][1:]))
    assert plan is not None and problems == [], problems
    engines = set(spec["build"]["args"]["ENGINES"].split())
    needed = {plan.engine.removeprefix("usi:")} | {
        "gnushogi" for opponent in plan.opponents if opponent.startswith("gnushogi:")}
    assert needed <= engines, (needed, engines)
    assert plan.web == "0.0.0.0:8080"
    assert spec["ports"] == ["127.0.0.1:${KEISEI_PIPELINE_WEB_PORT:-8082}:8080"]


def test_the_ranks_override_names_every_rank_port() -> None:
    """docker-compose.ranks.yml: the learner runs --ranks N, exposes each rank's two ports
    (``learner.launch.rank_bind``) and the actors are given every rank's endpoint."""
    from learner.launch import rank_bind

    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ranks = yaml.safe_load((ROOT / "docker-compose.ranks.yml").read_text())["services"]
    command = ranks["learner"]["command"]
    count = int(command[command.index("--ranks") + 1])
    assert count >= 2 and command[:len(base["learner"]["command"])] == base["learner"]["command"]
    bind = base["learner"]["environment"]["KEISEI_BIND"]
    ports = {rank_bind(bind, rank).rsplit(":", 1)[1] for rank in range(count)}
    exposed = set(base["learner"]["expose"]) | set(ranks["learner"]["expose"])
    assert exposed == ports | {str(int(port) + 1) for port in ports}
    endpoints = ranks["actor"]["environment"]["KEISEI_LEARNER"].split(",")
    assert endpoints == [f"tcp://learner:{port}" for port in sorted(ports)]


@pytest.mark.slow
@pytest.mark.e2e
def test_compose_services_train_as_processes(tmp_path: Path) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 5555)) == 0:
            pytest.skip("port 5555, which docker-compose.yml uses, is taken on this machine")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("port 8080, the web view's in docker-compose.yml, is taken on this machine")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # the image's /app/configs
    learner_command, learner_env = service(compose, "learner")
    actor_command, actor_env = service(compose, "actor")
    replicas = compose["services"]["actor"]["deploy"]["replicas"]
    learner = subprocess.Popen(learner_command, env=learner_env, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    actors = [subprocess.Popen(actor_command, env=actor_env, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
              for _ in range(replicas)]
    run_dir = tmp_path / "runs" / "compose"
    try:
        deadline = time.monotonic() + 240
        while not metrics(run_dir / "metrics.jsonl"):
            assert learner.poll() is None, learner.stdout.read() if learner.stdout else ""
            assert time.monotonic() < deadline, "no epoch within 240 s"
            time.sleep(0.5)
        first = metrics(run_dir / "metrics.jsonl")[0]
        assert first["mode"] == "distributed" and len(first["actors"]) == replicas
        with urllib.request.urlopen("http://127.0.0.1:8080/api/runs", timeout=10) as page:
            assert json.loads(page.read())["runs"][0]["step"] is not None  # the web view
        health = compose["services"]["learner"]["healthcheck"]["test"][1:]
        health[0] = str(BIN / health[0])
        checked = subprocess.run(health, env=learner_env, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        learner.send_signal(signal.SIGTERM)  # what `docker compose stop` sends (stop_signal)
        learner.wait(timeout=60)  # stop_grace_period
        assert learner.returncode == 130
        assert list((run_dir / "checkpoints").glob("checkpoint-*.pt"))
        for process in actors:
            process.wait(timeout=30)  # the learner's shutdown message ends them
            assert process.returncode == 0
    finally:
        for process in (learner, *actors):
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
