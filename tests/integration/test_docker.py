"""The compose stack's life with a real Docker engine: build, train, scale, stop, start
again, finish, give up on a bad configuration, and clean up.

Needs ``docker`` with the Compose v2 plugin and an engine that answers (on CI machines
``.ci/docker-setup`` makes one; ``make docker-test`` runs this file). Otherwise it skips
and says why. It builds its own image tag and compose project, so a user's ``keisei``
stack is never touched, and removes both (with the volume) at the end.

The image build needs torch. Set ``KEISEI_DOCKER_BUILD_ARGS`` (``NAME=VALUE`` words) to
choose its source; otherwise a torch wheel in pip's ``PIP_FIND_LINKS`` directories is
served to the build from the Docker bridge's address on this host, with dependencies from
``KEISEI_DOCKER_TORCH_INDEX`` (default PyPI), and failing that the Dockerfile's defaults
apply. ``KEISEI_DOCKER_RESTART``, if set, is a command that restarts the Docker daemon
(``.ci/docker-restart``, for the engine ``.ci/docker-setup`` started): the test then
checks that the stack comes back by itself, as after a host reboot. Each phase's time
and the image size are printed (run with ``-s``).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.docker]

STEPS_PER_EPOCH = 256
GIVE_UP_AFTER = 20  # seconds (docker-compose.yml: 300)
CONFIG = """\
[run]
dir = "runs/compose"

[model]
blocks = 1
channels = 16
value_hidden = 16

[selfplay]
games = 8
max_plies = 64

[train]
total_steps = {total_steps}
steps_per_epoch = 256
minibatch_size = 64
ppo_passes = 1
max_policy_lag = 1000

[evaluation]
every_epochs = 0

[checkpoint]
every_epochs = 1
"""

KILL_LEARNER = """
import os, psutil
for process in psutil.process_iter(["cmdline"]):
    if process.pid != os.getpid() and any("keisei-learner" in word for word in process.info["cmdline"] or []):
        process.kill()
"""


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def show(what: str, done: subprocess.CompletedProcess[str]) -> None:
    """What an attached `up` printed about the containers (not their logs), and returned."""
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line) for line in done.stdout.splitlines()]
    said = [line for line in lines if "|" not in line and line.strip()]
    print(f"\n{what}: returned {done.returncode}; printed " + " / ".join(said[-8:]))


def why_not_usable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command (on CI machines, .ci/docker-setup installs one)"
    try:
        info = docker("info", timeout=30, check=False)
        if info.returncode != 0:
            said = [line for line in info.stderr.splitlines() if line.strip()]
            return "no Docker engine answers: " + (said[-1].strip()[:200] if said else f"exit {info.returncode}")
        compose = docker("compose", "version", "--short", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer within 30 s"
    if compose.returncode != 0:
        return "no Compose v2 plugin (docker compose version failed)"
    return None


def bridge_address() -> str:
    """The host's address on Docker's default bridge, where a build can reach the host."""
    gateway = docker("network", "inspect", "bridge", "--format",
                     "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout.strip()
    if gateway:
        return gateway
    for address in psutil.net_if_addrs().get("docker0", []):
        if address.family.name == "AF_INET":
            return str(address.address)
    raise AssertionError("no address for Docker's bridge (docker0)")


@functools.cache
def local_torch_wheel() -> Path | None:
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        wheels = sorted(Path(folder).glob("torch-2.13.0*-cp311-cp311-*linux*x86_64.whl"))
        if wheels:
            return wheels[0]
    return None


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def build_args() -> Iterator[list[str]]:
    reason = why_not_usable()
    if reason is not None:
        pytest.skip(reason)
    if "KEISEI_DOCKER_BUILD_ARGS" in os.environ:
        yield shlex.split(os.environ["KEISEI_DOCKER_BUILD_ARGS"])
        return
    wheel = local_torch_wheel()
    if wheel is None:
        yield []
        return
    handler = functools.partial(QuietHandler, directory=str(wheel.parent))
    server = http.server.ThreadingHTTPServer((bridge_address(), 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield [f"TORCH_SPEC=torch @ http://{host}:{port}/{wheel.name}",
               "TORCH_INDEX=" + os.environ.get("KEISEI_DOCKER_TORCH_INDEX", "https://pypi.org/simple")]
    finally:
        server.shutdown()
        server.server_close()


class Stack:
    """One compose project: docker-compose.yml plus an override that mounts the test's
    configuration (``KEISEI_CONFIG``) read-only into the learner."""

    def __init__(self, work: Path) -> None:
        self.name = f"keisei-test-{os.getpid()}"
        self.image = f"keisei-test:{os.getpid()}"
        self.work = work
        (work / "config").mkdir(mode=0o755)
        (work / "override.yml").write_text(
            "services:\n  learner:\n    environment:\n      KEISEI_CONFIG: /config/test.toml\n"
            f"    volumes:\n      - {work / 'config'}:/config:ro\n"
            f"  actor:\n    environment:\n      KEISEI_GIVE_UP_AFTER: \"{GIVE_UP_AFTER}\"\n")
        self.env = {**os.environ, "KEISEI_IMAGE": self.image}
        self.phases: dict[str, float] = {}
        self.layers: list[Path] = []  # compose files between docker-compose.yml and the test's

    def configure(self, text: str) -> None:
        path = self.work / "config" / "test.toml"
        path.with_suffix(".tmp").write_text(text)
        path.with_suffix(".tmp").chmod(0o644)
        path.with_suffix(".tmp").replace(path)

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        files = [ROOT / "docker-compose.yml", *self.layers, self.work / "override.yml"]
        command = ["docker", "compose", "-p", self.name,
                   *(word for path in files for word in ("-f", str(path))), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def timed(self, phase: str, *args: str, timeout: float = 120,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        start = time.monotonic()
        done = self.compose(*args, timeout=timeout, check=check)
        self.phases[phase] = time.monotonic() - start
        return done

    def containers(self, service: str) -> list[dict]:
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        return json.loads(docker("inspect", *ids).stdout) if ids else []

    def volume_text(self, path: str) -> str:
        """A file in the run volume, read by a throwaway container (works while the stack is
        stopped)."""
        done = docker("run", "--rm", "-v", f"{self.name}_runs:/app/runs:ro", "--entrypoint", "cat",
                      self.image, f"/app/runs/{path}", check=False)
        return done.stdout if done.returncode == 0 else ""

    def metrics(self) -> list[dict]:
        return [json.loads(line) for line in self.volume_text("compose/metrics.jsonl").splitlines()]

    def assert_steps_continue(self) -> None:
        """One metrics line per epoch, each STEPS_PER_EPOCH on: no step lost or counted twice."""
        steps = [line["step"] for line in self.metrics()]
        assert steps == [STEPS_PER_EPOCH * (index + 1) for index in range(len(steps))], steps

    def wait(self, what: str, ready, timeout: float = 300) -> float:
        """Poll ``ready()`` until true; the seconds it took."""
        start = time.monotonic()
        while not ready():
            if time.monotonic() - start > timeout:
                logs = self.compose("logs", "--no-color", "--tail", "40", check=False).stdout
                raise AssertionError(f"{what}: not within {timeout:.0f} s\n{logs}")
            time.sleep(2)
        return time.monotonic() - start

    def down(self) -> None:
        self.compose("down", "-v", "--rmi", "all", "--remove-orphans", "--timeout", "30",
                     timeout=180, check=False)
        docker("image", "rm", "-f", self.image, check=False)


def test_compose_stack_with_a_real_engine(build_args: list[str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="keisei-docker-"))
    work.chmod(0o755)  # the containers' user reads the mounted configuration
    stack = Stack(work)
    try:
        run_stack(stack, build_args)
    finally:
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
        print("\ndocker test phases (s): " + ", ".join(f"{phase} {seconds:.1f}"
                                                    for phase, seconds in stack.phases.items()))


def run_stack(stack: Stack, build_args: list[str]) -> None:
    phases = stack.phases
    stack.configure(CONFIG.format(total_steps=10**9))
    stack.timed("build", "build", *(word for arg in build_args for word in ("--build-arg", arg)),
                timeout=1200)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", stack.image).stdout)
    print(f"\nimage {stack.image}: {size / 1e9:.2f} GB")
    extras = docker("run", "--rm", "--entrypoint", "python", stack.image, "-c",
                    "import tensorboard, matplotlib; print('extras ok')", check=False)
    assert extras.returncode == 0, f"TensorBoard or matplotlib missing from the image: {extras.stderr}"
    gpu = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "-f",
                          str(ROOT / "docker-compose.gpu.yml"), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert gpu.returncode == 0, gpu.stderr
    gpu_learner = json.loads(gpu.stdout)["services"]["learner"]
    assert gpu_learner["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"

    # Up: two actors train in distributed mode and the learner turns healthy.
    stack.timed("up -d", "up", "-d")
    [learner] = stack.containers("learner")

    def health() -> str:
        return str(stack.containers("learner")[0]["State"].get("Health", {}).get("Status"))

    def distributed_epoch(actors: int) -> bool:
        lines = stack.metrics()
        return bool(lines) and lines[-1]["mode"] == "distributed" and \
            lines[-1]["actor_states"].get("healthy", 0) >= actors

    phases["first distributed epoch"] = stack.wait("a distributed epoch with 2 actors",
                                                   lambda: distributed_epoch(2))
    phases["healthy"] = stack.wait("learner healthy", lambda: health() == "healthy", timeout=120)

    def web_view() -> bool:  # published on the host's loopback
        try:
            with urllib.request.urlopen("http://127.0.0.1:8080/api/runs", timeout=5) as page:
                return json.loads(page.read())["runs"][0]["step"] is not None
        except OSError:
            return False

    phases["web view"] = stack.wait("the web view on 127.0.0.1:8080", web_view, timeout=60)

    # Scale: a third actor joins; the learner container is the same, never restarted.
    stack.timed("scale to 3", "up", "-d", "--scale", "actor=3", "--no-recreate")
    phases["3 actors training"] = stack.wait("an epoch with 3 healthy actors",
                                             lambda: distributed_epoch(3))
    [same] = stack.containers("learner")
    assert same["Id"] == learner["Id"] and same["State"]["StartedAt"] == learner["State"]["StartedAt"]

    # Stop: SIGTERM, a checkpoint; the learner and the actors exit 130.
    stack.timed("stop", "stop")
    [stopped] = stack.containers("learner")
    assert stopped["State"]["ExitCode"] == 130, stopped["State"]
    assert all(actor["State"]["ExitCode"] == 130 for actor in stack.containers("actor"))
    before = stack.metrics()
    assert len(before) >= 2

    # Start: the run resumes, its step counter going on exactly from the checkpoint.
    stack.timed("start", "start")
    phases["epoch after start"] = stack.wait("an epoch after start",
                                             lambda: len(stack.metrics()) > len(before))
    assert "resum" in stack.compose("logs", "--no-color", "learner").stdout.lower()
    stack.assert_steps_continue()
    after = stack.metrics()
    assert after[:len(before)] == before
    epochs = [line["epoch"] for line in after]
    assert epochs == sorted(set(epochs))

    # A crash (the learner killed): on-failure restarts it and it resumes from its last
    # checkpoint; the epochs after that checkpoint are trained (and written) again.
    crashed_at = len(stack.metrics())
    stack.compose("exec", "-T", "learner", "python", "-c", KILL_LEARNER)
    phases["restart after a crash"] = stack.wait(
        "the crashed learner restarted",
        lambda: stack.containers("learner")[0]["RestartCount"] == 1, timeout=60)

    def resumes() -> int:
        return stack.compose("logs", "--no-color", "learner").stdout.count("resumed from")

    phases["resumed after the crash"] = stack.wait("the restarted learner resumed",
                                                   lambda: resumes() == 2, timeout=120)
    trained_before = stack.metrics()[-1]["time"]
    phases["epoch after the crash"] = stack.wait(
        "an epoch after the crash", lambda: stack.metrics()[-1]["time"] > trained_before, timeout=180)
    assert len(stack.metrics()) >= crashed_at - 1  # at most the epoch after the checkpoint lost
    stack.assert_steps_continue()

    # A host restart (the daemon stopped and started, where KEISEI_DOCKER_RESTART names a
    # command that does it): every container was stopped with SIGTERM and exited 130, so
    # on-failure brings all of them back, and the run resumes.
    restart = os.environ.get("KEISEI_DOCKER_RESTART")
    if restart:
        running = len(stack.containers("actor"))
        start = time.monotonic()
        subprocess.run(shlex.split(restart), check=True, timeout=300, cwd=ROOT)
        phases["daemon restart"] = time.monotonic() - start
        phases["resumed after the daemon restart"] = stack.wait(
            "the learner back after the daemon restart", lambda: resumes() == 3, timeout=180)
        trained_before = stack.metrics()[-1]["time"]
        phases["distributed epoch after the daemon restart"] = stack.wait(
            "a distributed epoch after the daemon restart",
            lambda: stack.metrics()[-1]["time"] > trained_before and distributed_epoch(running),
            timeout=180)
        stack.assert_steps_continue()
    else:
        print("\nno daemon restart: KEISEI_DOCKER_RESTART is not set")

    # End: a run that reaches total_steps ends the stack. A plain `up` returns 0 once all
    # containers have exited; `up --exit-code-from learner` returns the learner's code.
    for phase, flags in (("up to total_steps", ()),
                         ("up --exit-code-from learner to total_steps", ("--exit-code-from", "learner"))):
        stack.compose("stop")
        target = stack.metrics()[-1]["step"] + 2 * STEPS_PER_EPOCH
        stack.configure(CONFIG.format(total_steps=target))
        ended = stack.timed(phase, "up", *flags, timeout=600, check=False)
        show(phase, ended)
        assert ended.returncode == 0, ended.stdout[-3000:] + ended.stderr[-2000:]
        assert stack.metrics()[-1]["step"] == target
        time.sleep(5)  # a restart policy would have brought one back by now
        # --exit-code-from stops what is still running when the learner exits: an actor
        # that had not yet read the learner's shutdown ends by that SIGTERM (130)
        codes = {0} if not flags else {0, 130}
        for container in stack.containers("learner") + stack.containers("actor"):
            state = container["State"]
            assert state["Status"] == "exited" and not state["Restarting"], (container["Name"], state)
            assert state["ExitCode"] in (codes if "actor" in container["Name"] else {0}), state

    # Two learner ranks (docker-compose.ranks.yml): the one-rank run resumes on two, four
    # actors spread over the ranks' endpoints, the weights agree, and it ends as before.
    stack.compose("stop")
    stack.layers = [ROOT / "docker-compose.ranks.yml"]
    target = stack.metrics()[-1]["step"] + 4 * STEPS_PER_EPOCH
    stack.configure(CONFIG.format(total_steps=target) + "\n[ranks]\nchecksum_every = 1\n")
    ended = stack.timed("up with 2 ranks to total_steps", "up", "--scale", "actor=4",
                        timeout=600, check=False)
    show("up with 2 ranks", ended)
    assert ended.returncode == 0, ended.stdout[-3000:] + ended.stderr[-2000:]
    logs = stack.compose("logs", "--no-color", "learner").stdout
    assert "on 2 ranks" in logs and "rank 1 of 2 joined" in logs, logs[-3000:]
    last = stack.metrics()[-1]
    assert last["step"] == target and last["ranks"] == 2 and last["weights_agree"] is True, last
    assert all(ledger["balanced"] for ledger in last["rank_ledgers"]), last["rank_ledgers"]
    assert len(last["actors"]) == 4, last["actors"]
    stack.assert_steps_continue()
    stack.layers = []

    # A bad configuration: the learner exits 2 and is tried five times more, then stays
    # down; the actors give up on it, so a plain `up` returns; the run is untouched.
    stack.configure(CONFIG.format(total_steps=target).replace("games = 8", "games = 0"))
    failed = stack.timed("up with a bad configuration", "up", timeout=300, check=False)
    assert failed.returncode == 0, failed.stdout[-3000:] + failed.stderr[-2000:]
    show("up with a bad configuration", failed)
    assert "selfplay.games = 0" in stack.compose("logs", "--no-color", "learner").stdout
    [gave_up] = stack.containers("learner")
    assert gave_up["RestartCount"] == 5 and gave_up["State"]["Status"] == "exited", gave_up["State"]
    assert gave_up["State"]["ExitCode"] == 2
    assert all(actor["State"]["ExitCode"] == 0 for actor in stack.containers("actor"))
    assert stack.metrics()[-1]["step"] == target


PIPELINE_TINY = ["--engine-depth", "1", "--generate-minutes", "0.3", "--pretrain-minutes", "0.3",
                 "--selfplay-minutes", "0.3", "--opponent", "gnushogi:1", "--games", "2",
                 "--visits", "8", "--workers", "1",
                 *(word for item in ("model.blocks=1", "model.channels=16", "model.value_hidden=16",
                                     "selfplay.games=8", "selfplay.search_visits=4",
                                     "train.steps_per_epoch=256", "evaluation.every_epochs=0",
                                     "checkpoint.every_epochs=1", "run.threads=1")
                   for word in ("--set", item))]


def test_the_pipeline_profile_with_a_real_engine(build_args: list[str]) -> None:
    """``docker compose --profile pipeline``: the image with Debian's engines builds, its
    service stops cleanly and continues, and a short pipeline runs every phase in it."""
    work = Path(tempfile.mkdtemp(prefix="keisei-docker-"))
    work.chmod(0o755)
    stack = Stack(work)
    stack.image = f"keisei-test-engines:{os.getpid()}"  # volume_text reads with it
    stack.env["KEISEI_PIPELINE_IMAGE"] = stack.image
    try:
        built = stack.timed("build pipeline", "--profile", "pipeline", "build", "pipeline",
                            *(word for arg in build_args for word in ("--build-arg", arg)),
                            timeout=1200, check=False)
        if built.returncode != 0 and "apt-get" in built.stdout + built.stderr:
            pytest.skip("Debian's engines could not be installed in the image (no package "
                        "mirror reachable from the build?): " + built.stderr[-300:])
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        # the default command: stopped in its first phase (exit 130), started again, it goes on
        stack.compose("--profile", "pipeline", "up", "-d", "pipeline")

        def pipeline_log() -> str:
            return stack.compose("logs", "--no-color", "pipeline").stdout

        stack.wait("engine games being played", lambda: "generating with fairy-stockfish" in pipeline_log(),
                   timeout=120)
        time.sleep(5)
        stack.timed("stop pipeline", "--profile", "pipeline", "stop", "pipeline", timeout=180)
        [stopped] = stack.containers("pipeline")
        assert stopped["State"]["ExitCode"] == 130, stopped["State"]
        state = json.loads(stack.volume_text("pipeline/pipeline.json"))
        assert state["current"] == "generate" and not state["phases"]["generate"]["done"]
        stack.compose("--profile", "pipeline", "start", "pipeline")
        stack.wait("the pipeline continued", lambda: "--seed 1" in pipeline_log(), timeout=120)
        stack.compose("--profile", "pipeline", "stop", "pipeline", timeout=180)
        # a short pipeline, every phase, with the engines of the image
        done = stack.timed("short pipeline", "--profile", "pipeline", "run", "--rm", "pipeline",
                           "keisei-pipeline", "runs/short", *PIPELINE_TINY, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        state = json.loads(stack.volume_text("short/pipeline.json"))
        assert all(state["phases"][name]["done"] for name in
                   ("generate", "pretrain", "selfplay", "evaluate")), state
        assert "keisei vs " in done.stdout and "Play the network" in done.stdout
    finally:
        stack.compose("--profile", "pipeline", "down", "-v", "--rmi", "all", "--remove-orphans",
                      "--timeout", "30", timeout=180, check=False)
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
        print("\ndocker pipeline phases (s): " + ", ".join(
            f"{phase} {seconds:.1f}" for phase, seconds in stack.phases.items()))
