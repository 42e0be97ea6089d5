"""What several learner ranks buy: ingest and update, 1 rank against 2, in one run.

  * ingest: simulated actors replay recorded games over ZeroMQ at full speed (frames
    encoded once, sent as fast as the learner takes them, heartbeats and pauses as a real
    actor's) against 1 and then 2 rank ingest processes. Each is the learner's own ingest
    path (ROUTER, hello/welcome, admission: replay and validation, buffer), with its buffer
    drained as it fills instead of trained on, so the figure is ingest alone. Printed:
    plies/s admitted per rank, CPU seconds per admitted ply, and from those, on paper,
    how many ranks a number of actors needs (one actor's rate measured here too);
  * update: PPO samples/s of one update over the same epoch on 1 rank x N threads and on
    N ranks x 1 thread (gloo, this machine's cores), the default network unless --set.

Usage: python -m bench.ranks [--seconds S] [--actors K] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import zmq

from bench.distributed import drained_learner
from keisei.config import Config, load_config
from keisei.model import build_model
from keisei.protocol import Ack, Games, Heartbeat, Hello, Shutdown, Welcome, decode, encode
from keisei.records import GameRecord
from keisei.selfplay import Collector
from learner.buffer import EpochBatch
from learner.launch import RankInfo, free_port

GAMES_PER_MESSAGE = 16


class Records:
    def __init__(self) -> None:
        self.records: list[GameRecord] = []

    def put_record(self, record: GameRecord) -> None:
        self.records.append(record)


def record_games(config: Config, seconds: float) -> tuple[list[GameRecord], float]:
    """Games played by the in-process collector (1 torch thread) in about ``seconds``, and
    its plies/s: one actor's rate on one core."""
    torch.set_num_threads(1)
    sink = Records()
    collector = Collector(build_model(config.model), config.selfplay, sink, precision="auto")
    collector.model.eval()
    collector.step(0)
    start, started = collector.stats.steps, time.perf_counter()
    while time.perf_counter() - started < seconds or len(sink.records) < GAMES_PER_MESSAGE:
        collector.step(0)
    return sink.records, (collector.stats.steps - start) / (time.perf_counter() - started)


# --- ingest ---------------------------------------------------------------------------------
def replay_actor(endpoint: str, actor_id: str, records: list[GameRecord], stop_at: float) -> None:
    """A simulated actor: say hello, then send the recorded games round and round until
    ``stop_at`` (``time.time()``), pausing while the learner asks it to."""
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDTIMEO, 500)  # the learner gone at the end: no send blocks
    dealer.connect(endpoint)
    try:
        dealer.send_multipart(encode(Hello(actor_id, "bench", os.getpid())))
        if not dealer.poll(30_000):
            return
        welcome = decode(dealer.recv_multipart())
        if not isinstance(welcome, Welcome):
            raise RuntimeError(f"{actor_id} was not welcomed: {welcome}")
        messages = [encode(Games(actor_id, records[start:start + GAMES_PER_MESSAGE]))
                    for start in range(0, len(records) - GAMES_PER_MESSAGE + 1, GAMES_PER_MESSAGE)]
        accepting, next_beat, index = True, 0.0, 0
        while time.time() < stop_at:
            try:
                now = time.monotonic()
                if now >= next_beat:
                    dealer.send_multipart(encode(Heartbeat(actor_id, 0.0, 0)))
                    next_beat = now + welcome.heartbeat_interval
                while dealer.poll(0 if accepting else 50):
                    reply = decode(dealer.recv_multipart())
                    if isinstance(reply, Ack):
                        accepting = reply.accepting
                    elif isinstance(reply, Shutdown):
                        return
                if accepting:
                    dealer.send_multipart(messages[index % len(messages)], copy=False)
                    index += 1
            except zmq.Again:
                continue  # the learner's queue is full: try again
    finally:
        dealer.close()
        context.term()


def ingest_rank(config: Config, port: int, seconds: float, warmup: float,
                results: Any) -> None:
    """One rank's ingest path, its buffer drained as it fills; puts (plies admitted,
    CPU seconds, wall seconds, plies refused) over the measured window into ``results``."""
    from learner.app import LearnerOptions

    torch.set_num_threads(1)
    options = LearnerOptions(remote_actors=True, bind=f"tcp://127.0.0.1:{port}")
    with drained_learner(config, options) as server:
        process = psutil.Process()
        server_thread = next(thread.native_id for thread in threading.enumerate()
                             if thread.name == "learner-server")
        time.sleep(warmup)
        counters, started = server.counters, time.perf_counter()
        cpu, thread_cpu = _cpu(process), _thread_cpu(process, server_thread)
        threads = _threads(process)
        time.sleep(seconds)
        after = server.counters
        cpu_after, thread_after = _cpu(process), _thread_cpu(process, server_thread)
        others = {name: busy - threads.get(name, 0.0)
                  for name, busy in _threads(process).items()}
        wall = time.perf_counter() - started
    results.put(IngestFigures(
        port, after["steps_received"] - counters["steps_received"], cpu_after - cpu,
        thread_after - thread_cpu, wall,
        after["steps_invalid"] - counters["steps_invalid"]
        + after["steps_dropped_backpressure"] - counters["steps_dropped_backpressure"],
        sorted(others.items(), key=lambda item: -item[1])[:3]))


def _threads(process: psutil.Process) -> dict[str, float]:
    """CPU seconds of each thread of ``process``, by name (Python's, else the system's)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    busy: dict[str, float] = {}
    for thread in process.threads():
        name = names.get(thread.id)
        if name is None:
            try:
                name = Path(f"/proc/{process.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                name = str(thread.id)
        busy[name] = busy.get(name, 0.0) + thread.user_time + thread.system_time
    return busy


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _thread_cpu(process: psutil.Process, native_id: int | None) -> float:
    for thread in process.threads():
        if thread.id == native_id:
            return float(thread.user_time + thread.system_time)
    return 0.0


@dataclass(frozen=True)
class IngestFigures:
    port: int
    admitted: int  # plies admitted in the window
    cpu: float  # the rank process's CPU seconds in it
    server_cpu: float  # of which its server thread's (receive, decode, replay, admit)
    wall: float
    refused: int  # plies invalid or dropped for back-pressure
    busiest: list[tuple[str, float]]  # the busiest threads, CPU seconds in the window


def ingest(config: Config, records: list[GameRecord], ranks: int, actors: int,
           seconds: float) -> list[IngestFigures]:
    """The figures of each of ``ranks`` ingest processes, fed by ``actors`` simulated
    actors spread evenly over them."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    base = free_port()
    ports = [base + 2 * rank for rank in range(ranks)]  # as --ranks binds them
    warmup = 8.0  # the rank processes import and bind; the actors join and fill the pipes
    processes = [context.Process(target=ingest_rank, args=(config, port, seconds, warmup, results))
                 for port in ports]
    for process in processes:
        process.start()
    time.sleep(3.0)
    stop_at = time.time() + warmup + seconds + 2.0
    feeders = [context.Process(target=replay_actor,
                               args=(f"tcp://127.0.0.1:{ports[index % ranks]}", f"replay-{index}",
                                     records, stop_at))
               for index in range(actors)]
    for feeder in feeders:
        feeder.start()
    try:
        figures = [results.get(timeout=warmup + seconds + 120) for _ in ports]
    finally:
        for process in [*feeders, *processes]:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
    return sorted(figures, key=lambda figure: figure.port)


# --- update ---------------------------------------------------------------------------------
def update_rank(info: RankInfo, port: int, data: Path, overrides: list[str], repeats: int,
                results: Any) -> None:
    """One rank of an update job: ``repeats`` updates over its share of the epoch in
    ``data``; rank 0 puts the seconds each took into ``results``."""
    os.environ.update({"WORLD_SIZE": str(info.world), "RANK": str(info.rank),
                       "LOCAL_RANK": str(info.rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    from learner.ranks import Ranks, split_buffer
    from learner.trainer import Trainer

    saved = torch.load(data, weights_only=False)
    config = load_config(None, overrides)
    with Ranks(info, torch.device("cpu"), 300.0) as ranks:
        trainer = Trainer.build(config, threading.Event(), config.run.threads, world=ranks)
        share = split_buffer(saved["batch"], info.world)[info.rank]
        batch = EpochBatch(**{name: tensor.numpy() for name, tensor in share.items()})
        times: list[float] = []
        for _ in range(repeats):
            trainer.model.load_state_dict(saved["model"])
            ranks.barrier()
            started = time.perf_counter()
            figures = trainer._ppo(batch)
            ranks.barrier()
            times.append(time.perf_counter() - started)
        if ranks.is_main:
            results.put((times, figures["ppo_passes"]))


def update_speed(world: int, threads: int, data: Path, overrides: list[str],
                 repeats: int) -> tuple[list[float], float]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    overrides = [*overrides, f"run.threads={threads}"]
    processes = [context.Process(target=update_rank,
                                 args=(RankInfo(rank, world, rank), port, data, overrides,
                                       repeats, results))
                 for rank in range(world)]
    for process in processes:
        process.start()
    try:
        times, passes = results.get(timeout=1800)
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
    return times, passes


def record_epoch(config: Config, path: Path) -> int:
    """Collect one epoch with fresh weights (seeded) and save weights and epoch to ``path``."""
    from learner.trainer import Trainer

    trainer = Trainer.build(config, threading.Event(), 1)
    initial = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    trainer.collect()
    batch = trainer.buffer.take_epoch()
    columns = {name: torch.from_numpy(getattr(batch, name).copy())
               for name in EpochBatch.__dataclass_fields__}
    torch.save({"model": initial, "batch": columns}, path)
    return batch.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="each ingest measurement")
    parser.add_argument("--actors", type=int, default=4, help="simulated actors")
    parser.add_argument("--repeats", type=int, default=3, help="updates timed per layout")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="configuration override (both parts)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    config = load_config(None, args.overrides)
    print(f"network {config.model.blocks}x{config.model.channels}, {cores} cores, "
          f"torch {torch.__version__}", flush=True)

    records, actor_rate = record_games(config, 15.0)
    plies = sum(record.length for record in records)
    print(f"recorded {len(records)} games ({plies} plies, {plies / len(records):.0f} a game); "
          f"one actor on one core plays {actor_rate:.0f} plies/s", flush=True)
    print(f"\ningest: {args.actors} simulated actors, {GAMES_PER_MESSAGE} games a message, "
          f"{args.seconds:.0f} s measured", flush=True)
    per_ply: dict[int, float] = {}
    layouts = [(1, str(cores)), (1, "1"), (2, "1")]  # numpy's OpenBLAS threads: its default
    for ranks, blas in layouts:  # (one per core, spinning after each product), then Keisei's
        os.environ["OPENBLAS_NUM_THREADS"] = blas  # read by the rank processes' numpy
        figures = ingest(config, records, ranks, args.actors, args.seconds)
        print(f"  {ranks} rank(s), OpenBLAS threads {blas}:", flush=True)
        for figure in figures:
            admitted = max(figure.admitted, 1)
            print(f"    port {figure.port}: {figure.admitted / figure.wall:8.0f} "
                  f"plies/s admitted; CPU per admitted ply {figure.cpu / admitted * 1e6:6.1f} us "
                  f"(server thread {figure.server_cpu / admitted * 1e6:5.1f} us, "
                  f"{figure.server_cpu / figure.wall:.0%} busy); {figure.cpu / figure.wall:.2f} "
                  f"cores in all; {figure.refused} plies refused", flush=True)
            print("      busiest threads: " + ", ".join(
                f"{name} {busy / figure.wall:.0%}" for name, busy in figure.busiest), flush=True)
        total = sum(figure.admitted / figure.wall for figure in figures)
        if blas == "1":
            per_ply[ranks] = (sum(figure.server_cpu for figure in figures)
                              / max(sum(figure.admitted for figure in figures), 1))
        print(f"    together: {total:8.0f} plies/s", flush=True)
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    ceiling = 1.0 / per_ply[1]
    print(f"\non paper: a rank's ingest is its one server thread, so one rank admits at most "
          f"about {ceiling:.0f} plies/s (1 / its CPU per ply, 1 rank), given a free core for "
          f"that thread; one actor on one core plays {actor_rate:.0f} plies/s")
    for actors in (8, 32, 128, 512, 2048):
        load = actors * actor_rate / ceiling
        print(f"  {actors:5d} one-core actors: {load:7.2f} ranks' worth of ingest -> "
              f"{max(1, math.ceil(load / 0.8))} rank(s) to keep each under 80%")

    with tempfile.TemporaryDirectory() as directory:
        data = Path(directory) / "epoch.pt"
        overrides = [*args.overrides, "train.target_kl=0"]  # every pass runs in both layouts
        steps = record_epoch(load_config(None, overrides), data)
        print(f"\nupdate: one epoch of {steps} steps, {config.train.ppo_passes} passes, "
              f"minibatch {config.train.minibatch_size} (split over the ranks)", flush=True)
        baseline = 0.0
        for world, threads in ((1, cores), (cores, 1)):
            if world > 1 and config.train.minibatch_size % world:
                print(f"  {world} ranks: skipped (minibatch not divisible)")
                continue
            times, passes = update_speed(world, threads, data, overrides, args.repeats)
            best = min(times)
            rate = steps * passes / best
            baseline = baseline or rate
            print(f"  {world} rank(s) x {threads} thread(s): {rate:8.0f} samples/s "
                  f"(best of {len(times)}: {best:.2f} s; all {', '.join(f'{t:.2f}' for t in times)})"
                  f"  {rate / baseline:.2f}x the first", flush=True)


if __name__ == "__main__":
    main()
