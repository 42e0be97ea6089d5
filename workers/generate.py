"""``keisei-generate``: training games played by an engine against itself, written as CSA.

Usage::

    keisei-generate --engine SPEC [--depth N | --nodes N | --byoyomi MS] --output DIR
                    [--games N] [--minutes M] [--workers W] [--random-plies K]
                    [--random-share P] [--max-plies N] [--seed S]

``SPEC`` is any player ``keisei-eval`` knows: ``usi:COMMAND`` (Fairy-Stockfish, GPS
Shogi's ``gpsusi``, Sjaak II), ``gnushogi:DEPTH``, ``checkpoint:PATH``, ``greedy``.
Each game starts from one of the shipped openings (or ``--openings``). Then, for the
next ``--random-plies`` plies, each move is a uniformly random legal move with
probability ``--random-share`` and the engine's otherwise, so that a deterministic
engine's games differ. The record starts *after* that prefix: every move in it is the
engine's, and ``keisei-pretrain`` imitates none of the random ones.

Each worker process appends its games to ``DIR/games-WW.csa`` (CSA V2.2, games
separated by ``/``), one whole game per write, so an interrupted run keeps every
finished game. Progress is printed every ``--progress`` seconds; a summary (games,
positions, result mix, plies/s) at the end, also as ``DIR/summary.json``.
Exit codes: 0 done (also after Ctrl-C once the workers have started), 1 failed, 2 bad
arguments or engine, 130 interrupted before the workers had started (nothing written).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import queue
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from keisei.cli import add_version
from keisei.dataset import GENERATOR_STARTED
from keisei.errors import IllegalMoveError, KeiseiError
from keisei.evaluation import apply_decision, load_openings
from keisei.files import write_json_atomically
from keisei.kifu import to_csa
from keisei.processes import die_with_parent
from keisei.shogi import Color, Game
from workers import evaluate
from workers.engines import EngineError
from workers.evaluate import (
    PlayerSpec,
    add_engine_arguments,
    build_player,
    check_player,
    parse_options,
    parse_spec,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateTask:
    """What one worker process plays: games ``worker, worker + workers, ...``."""

    spec: PlayerSpec
    worker: int
    workers: int
    games: int | None
    deadline: float | None
    """``time.time()`` after which no new game starts."""
    openings: list[tuple[str, ...]]
    random_plies: int
    random_share: float
    max_plies: int
    seed: int
    output: str


@dataclass(frozen=True)
class GameSummary:
    """What a worker reports about one finished game."""

    worker: int
    plies: int
    """Moves in the record (the engine's moves)."""
    winner: str
    """``black``, ``white`` or ``draw``."""
    reason: str


def start_game(opening: Sequence[str], random_plies: int, random_share: float,
               max_plies: int, rng: random.Random, choose: Any) -> Game:
    """The opening, then ``random_plies`` plies each random with probability
    ``random_share`` (``choose(game)`` plays the others); returns a fresh ``Game`` that
    starts where that prefix ended, so its moves will all be the engine's."""
    prefix = Game(max_plies=len(opening) + random_plies + 1)
    for move in opening:
        prefix.push_usi(move)
    for _ in range(random_plies):
        if prefix.is_over:
            break
        if rng.random() < random_share:
            prefix.push(rng.choice(prefix.legal_moves()))
        else:
            apply_decision(prefix, choose(prefix))
    if prefix.is_over:  # a prefix that already ended (mate by a random move): no record
        return Game(max_plies=max_plies)
    return Game(prefix.sfen(), max_plies=max_plies)


def play_games(task: GenerateTask, progress: Any, stop: Any) -> None:
    """A worker: play games until the count, the deadline or ``stop`` (an event the parent
    sets; the game in play is then left unfinished and unwritten), append each as CSA."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # its terminate() ends a worker at once
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # held while it was started
    die_with_parent()  # and a parent killed outright takes its workers with it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s "
                        "%(levelname)s %(message)s", force=True)
    player = build_player(task.spec)
    path = Path(task.output) / f"games-{task.worker:02d}.csa"
    index = task.worker
    try:
        with open(path, "a", encoding="utf-8") as handle:
            while task.games is None or index < task.games:
                if stop.is_set() or (task.deadline is not None and time.time() >= task.deadline):
                    break
                rng = random.Random(task.seed * 1_000_003 + index)
                opening = task.openings[index % len(task.openings)]

                def choose(game: Game, rng: random.Random = rng) -> Any:
                    return player.choose([game], [rng])[0]

                game = start_game(opening, task.random_plies, task.random_share,
                                  task.max_plies, rng, choose)
                while not game.is_over and not stop.is_set():
                    apply_decision(game, choose(game))
                if not game.is_over:
                    break
                handle.write(("/\n" if handle.tell() else "") + to_csa(game, (player.name,) * 2))
                handle.flush()
                outcome = game.outcome
                assert outcome is not None
                winner = "draw" if outcome.winner is None else str(outcome.winner)
                progress.put(GameSummary(task.worker, game.ply, winner, str(outcome.reason)))
                index += task.workers
    finally:
        player.close()
        progress.put(None)


@dataclass
class Totals:
    """Running totals over every worker's games."""

    games: int = 0
    positions: int = 0
    results: Counter[str] | None = None
    reasons: Counter[str] | None = None

    def add(self, summary: GameSummary) -> None:
        self.results = self.results or Counter()
        self.reasons = self.reasons or Counter()
        self.games += 1
        self.positions += summary.plies
        self.results[summary.winner] += 1
        self.reasons[summary.reason] += 1

    def line(self, seconds: float) -> str:
        results = self.results or Counter()
        mix = " ".join(f"{key} {results[key] / max(self.games, 1):.0%}"
                       for key in (str(Color.BLACK), str(Color.WHITE), "draw"))
        return (f"{self.games} games, {self.positions} positions, {mix}, "
                f"{self.positions / max(seconds, 1e-9):.0f} plies/s")

    def to_dict(self, seconds: float) -> dict[str, object]:
        return {"games": self.games, "positions": self.positions, "seconds": round(seconds, 1),
                "plies_per_second": self.positions / max(seconds, 1e-9),
                "results": dict(self.results or {}), "reasons": dict(self.reasons or {})}


STOPS = {signal.SIGINT, signal.SIGTERM}
STOP_SECONDS = 10.0  # how long stopped workers may take to finish their move and report


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block ends, then raise ``KeyboardInterrupt``
    if one came: a stop while a worker is being started would leave it half-started
    (a spawned child reading half its start-up data fails with a traceback). The signals
    are also blocked in this thread, so a worker started here starts with them blocked
    and ``play_games`` decides what they do before it unblocks them."""
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in STOPS}
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # a pending stop reaches hold()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt


def generate(tasks: Sequence[GenerateTask], progress_seconds: float,
             on_started: Callable[[], None] | None = None) -> Totals:
    """Run the workers, print progress, stop them cleanly on Ctrl-C; the totals.
    ``on_started`` runs once every worker has started: from then on a stop is clean."""
    context = multiprocessing.get_context("spawn")
    processes: list[multiprocessing.process.BaseProcess] = []
    progress: Any = None
    stop: Any = None
    totals = Totals()
    started = time.monotonic()
    last_print = started
    running = len(tasks)
    try:
        with stops_held():  # the queue may start multiprocessing's resource tracker too
            stop = context.Event()
            progress = context.Queue()
            processes = [context.Process(target=play_games, args=(task, progress, stop),
                                         daemon=True) for task in tasks]
            for process in processes:
                process.start()
        if on_started is not None:
            on_started()
        while running:
            try:
                item = progress.get(timeout=0.5)
            except queue.Empty:
                item = False
                if not any(process.is_alive() for process in processes):
                    break
            if item is None:
                running -= 1
            elif item:
                totals.add(item)
            now = time.monotonic()
            if now - last_print >= progress_seconds:
                print(f"[{now - started:6.0f} s] {totals.line(now - started)}", flush=True)
                last_print = now
    except KeyboardInterrupt:
        print("interrupted: stopping the workers (finished games are kept)", flush=True)
        # each finishes its move and reports every game it wrote; a second Ctrl-C aborts
        if stop is not None:
            stop.set()
        deadline = time.monotonic() + STOP_SECONDS
        while (progress is not None and running and time.monotonic() < deadline
               and any(process.is_alive() for process in processes)):
            try:
                item = progress.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                running -= 1
            elif item:
                totals.add(item)
    finally:
        for process in processes:
            if process.pid is None:  # stopped before it started
                continue
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        while progress is not None:  # games that finished while stopping
            try:
                item = progress.get_nowait()
            except queue.Empty:
                break
            if item:
                totals.add(item)
    failed = [task.worker for task, process in zip(tasks, processes, strict=True)
              if process.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise KeiseiError(f"worker(s) {failed} failed; see the log above")
    return totals


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-generate", description="Engine self-play games as CSA records, for "
        "keisei-pretrain.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="engines: usi:COMMAND | gnushogi:DEPTH | checkpoint:PATH | greedy")
    parser.add_argument("--engine", default="usi:fairy-stockfish", metavar="SPEC",
                        help="the player of both sides (default usi:fairy-stockfish)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the CSA files")
    parser.add_argument("--games", type=int, help="games to play in all")
    parser.add_argument("--minutes", type=float, help="start no game after this many minutes "
                        "(with --games: whichever comes first)")
    parser.add_argument("--workers", type=int, default=1, help="processes (one engine each)")
    parser.add_argument("--random-plies", type=int, default=8, metavar="K",
                        help="plies after the opening that may be random (default 8)")
    parser.add_argument("--random-share", type=float, default=0.25, metavar="P",
                        help="chance that each of those plies is a random legal move (default 0.25)")
    parser.add_argument("--max-plies", type=int, default=320, help="a game this long is a draw")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same games")
    parser.add_argument("--openings", metavar="FILE",
                        help="USI move lines from the start position (default: Keisei's set)")
    parser.add_argument("--progress", type=float, default=10.0, metavar="S",
                        help="seconds between progress lines")
    add_engine_arguments(parser, "usi: engines", "go depth N (default 4 when no limit is given)")
    return add_version(parser)


def check_arguments(args: argparse.Namespace) -> list[str]:
    problems = evaluate.check_arguments(args, ("workers", "max_plies"))
    if args.games is None and args.minutes is None:
        problems.append("say how much to play: --games N, --minutes M or both")
    if args.games is not None and args.games < 1:
        problems.append("--games must be at least 1")
    if args.minutes is not None and not args.minutes > 0:
        problems.append("--minutes must be more than 0")
    if args.random_plies < 0:
        problems.append("--random-plies must be at least 0")
    if not 0.0 <= args.random_share <= 1.0:
        problems.append("--random-share must be from 0 to 1")
    if not args.progress > 0:
        problems.append("--progress must be more than 0")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    problems = check_arguments(args)
    if problems:
        print("keisei-generate: " + "; ".join(problems), file=sys.stderr)
        return 2
    depth = args.depth
    if args.engine.startswith("usi:") and depth is None and args.nodes is None and args.byoyomi is None:
        depth = 4
    output = Path(args.output)
    try:
        spec = parse_spec(args.engine, options=parse_options(args.usi_option), depth=depth,
                          nodes=args.nodes, byoyomi_ms=args.byoyomi, move_timeout=args.move_timeout)
        check_player(spec)
        text = Path(args.openings).read_text(encoding="utf-8") if args.openings else None
        openings = load_openings(text)
        output.mkdir(parents=True, exist_ok=True)
    except (EngineError, IllegalMoveError, ValueError, OSError, KeiseiError) as exc:
        print(f"keisei-generate: {exc}", file=sys.stderr)
        return 2
    existing = sorted(output.glob("games-*.csa"))
    if existing:
        print(f"keisei-generate: appending to {len(existing)} existing file(s) in {output}; "
              "use another --seed for new games", flush=True)
    deadline = time.time() + 60 * args.minutes if args.minutes is not None else None
    tasks = [GenerateTask(spec, worker, args.workers, args.games, deadline, openings,
                          args.random_plies, args.random_share, args.max_plies, args.seed,
                          str(output)) for worker in range(args.workers)]
    started = time.monotonic()
    # Ctrl-C, or SIGINT or SIGTERM from a parent such as keisei-pipeline, stops it cleanly,
    # even where it was started with SIGINT ignored (a shell's background job)
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in STOPS}

    def announce() -> None:
        print(f"{GENERATOR_STARTED} {spec.name} on {args.workers} process(es) into {output}",
              flush=True)

    try:
        totals = generate(tasks, args.progress, on_started=announce)
    except KeiseiError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # before a worker was started: nothing was written
        print("interrupted before the workers started", flush=True)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    seconds = time.monotonic() - started
    print(f"done: {totals.line(seconds)} in {seconds:.0f} s; reasons: "
          + ", ".join(f"{key} {value}" for key, value in sorted((totals.reasons or {}).items())))
    summary = {"engine": spec.name, "spec": spec.spec, "workers": args.workers, "seed": args.seed,
               "random_plies": args.random_plies, "random_share": args.random_share,
               "max_plies": args.max_plies, **totals.to_dict(seconds)}
    write_json_atomically(output / "summary.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
