"""Collection speed in-process and through actors, wire bytes and serialisation cost.

All with the default 6x64 network and automatic precision, in one run:
  * sequential: the in-process collector (1 torch thread) steps/s;
  * learner + 1 actor, and learner + N actors (N = cores): steps/s the learner receives,
    validates and stores, with the buffer drained as fast as it fills (no PPO update,
    so the figure is collection alone);
  * wire bytes per step of a games message, and the actor's serialisation time per step
    as a share of its time per step; the learner's decode + replay time per step.

Usage: python -m bench.distributed [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from keisei.config import Config, load_config
from keisei.model import build_model
from keisei.protocol import Games, decode, encode
from keisei.records import FinishedGame, replay_game
from keisei.selfplay import Collector
from learner.app import Learner, LearnerOptions
from learner.buffer import ExperienceBuffer
from learner.server import LearnerServer


class ListSink:
    def __init__(self) -> None:
        self.games: list[FinishedGame] = []

    def put(self, game: FinishedGame) -> None:
        self.games.append(game)


def sequential(config: Config, seconds: float) -> tuple[float, list[FinishedGame]]:
    torch.set_num_threads(1)
    sink = ListSink()
    collector = Collector(build_model(config.model), config.selfplay, sink, precision="auto")
    collector.model.eval()
    for _ in range(3):
        collector.step(0)
    start, started = collector.stats.steps, time.perf_counter()
    while time.perf_counter() - started < seconds:
        collector.step(0)
    return (collector.stats.steps - start) / (time.perf_counter() - started), sink.games


@contextmanager
def draining(buffer: ExperienceBuffer) -> Iterator[None]:
    """While inside, ``buffer``'s epochs are taken as fast as they fill: a stand-in for the
    PPO update, so what is measured is collection or ingest alone."""
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            if buffer.wait_until_ready(0.1):
                buffer.take_epoch()
                buffer.commit_epoch()

    drainer = threading.Thread(target=drain, name="drain", daemon=True)
    drainer.start()
    try:
        yield
    finally:
        done.set()
        drainer.join()


@contextmanager
def drained_learner(config: Config, options: LearnerOptions) -> Iterator[LearnerServer]:
    """A learner in a throwaway run directory, its buffer drained (``draining``): its
    server, whose counters say what came in."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = replace(config, run=replace(config.run, dir=run_dir),
                         display=replace(config.display, mode="plain"))
        with Learner(config, options) as learner, draining(learner.trainer.buffer):
            assert learner.server is not None
            yield learner.server


def through_actors(config: Config, actors: int, seconds: float, port: int) -> tuple[float, dict[str, int]]:
    """Steps/s received by a learner from ``actors`` local actor processes."""
    options = LearnerOptions(local_actors=actors, bind=f"tcp://127.0.0.1:{port}")
    with drained_learner(config, options) as server:
        deadline = time.monotonic() + 120
        while server.counters["steps_received"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # actors start up, receive weights, finish their first games
        time.sleep(seconds / 4)
        start, started = server.counters["steps_received"], time.perf_counter()
        time.sleep(seconds)
        rate = (server.counters["steps_received"] - start) / (time.perf_counter() - started)
        counters = dict(server.counters)
    return rate, counters


def serialisation(games: list[FinishedGame], max_plies: int) -> tuple[float, float, float]:
    """Bytes per step, actor encode seconds per step, learner decode+replay seconds per step."""
    records = list(games)
    steps = sum(record.length for record in records)
    started = time.perf_counter()
    for _ in range(20):
        frames = encode(Games("bench", records))
    encode_seconds = (time.perf_counter() - started) / 20
    size = sum(memoryview(frame).nbytes for frame in frames)
    started = time.perf_counter()
    decoded = decode([bytes(frame) for frame in frames])
    assert isinstance(decoded, Games)
    for record in decoded.games:
        replay_game(record, max_plies)
    replay_seconds = time.perf_counter() - started
    return size / steps, encode_seconds / steps, replay_seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=5655)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    config = load_config(None, [])
    rate_sequential, games = sequential(config, args.seconds)
    bytes_per_step, encode_per_step, replay_per_step = serialisation(games, config.selfplay.max_plies)
    rate_one, _ = through_actors(config, 1, args.seconds, args.port)
    rate_many, counters = through_actors(config, cores, args.seconds, args.port + 10)
    print(f"default network {config.model.blocks}x{config.model.channels}, {config.selfplay.games} games "
          f"per collector, {cores} cores")
    print(f"sequential in-process (1 thread) : {rate_sequential:8.0f} steps/s")
    print(f"learner + 1 actor                : {rate_one:8.0f} steps/s")
    print(f"learner + {cores} actors               : {rate_many:8.0f} steps/s  "
          f"({rate_many / max(rate_one, 1e-9):.2f}x one actor; goal >= {0.85 * cores:.2f}x)")
    print(f"wire bytes per step              : {bytes_per_step:8.1f} B  (goal <= 1024; measured over the "
          f"whole run: {counters['games_bytes'] / max(counters['steps_received'], 1):.1f} B)")
    actor_step_seconds = 1.0 / rate_sequential
    print(f"actor serialisation per step     : {encode_per_step * 1e6:8.2f} us = "
          f"{encode_per_step / actor_step_seconds:.2%} of an actor's time per step (goal <= 5%)")
    print(f"learner decode + replay per step : {replay_per_step * 1e6:8.2f} us "
          f"(learner CPU needed per collected step)")


if __name__ == "__main__":
    main()
