"""``keisei-eval``: how strong is a checkpoint? Matches against random, greedy, other
checkpoints and real Shogi engines, with Elo estimates.

Usage::

    keisei-eval --checkpoint PATH [--visits N | --movetime MS] --opponent SPEC
                [--opponent SPEC ...] [--games N] [--workers W] [--seed S] [--output DIR]
    keisei-eval --checkpoint PATH [--visits N | --movetime MS] --ladder [--games N]

The checkpoint plays its policy's best move, or searches (``keisei.search``) ``--visits``
per move or ``--movetime`` milliseconds per move; the budget is part of its name in
every table and record. ``SPEC`` is ``random``, ``greedy``, ``checkpoint:PATH`` (a
search budget may follow: ``checkpoint:PATH@256`` visits, ``checkpoint:PATH@500ms``),
``usi:COMMAND`` (with ``--depth``/``--nodes``/``--byoyomi`` and ``--usi-option
NAME=VALUE``) or ``gnushogi:DEPTH``. Every match is colour-swapped pairs from the shipped openings.
Games are written as KIF and CSA under ``--output``, with ``results.json``.
Ctrl-C, SIGINT or SIGTERM (even where it was started with SIGINT ignored, as a shell's
background job is) stops it: the opponents played to the end keep their games and, where
there is one, ``results.json`` (marked ``"interrupted"``, with the opponents not played);
the match in progress is dropped.
Exit codes: 0 done, 1 failed, 2 bad arguments, checkpoint or engine, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.pool
import os
import random
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from keisei import elo
from keisei.checkpoint import CheckpointError
from keisei.cli import ExitCode, add_version
from keisei.config import ConfigError, load_search_config
from keisei.errors import IllegalMoveError, KeiseiError
from keisei.evaluation import (
    ROOT_MATE_PLIES,
    GreedyPlayer,
    MatchResult,
    Pairing,
    PlayedGame,
    Player,
    PolicyPlayer,
    RandomPlayer,
    SearchPlayer,
    load_openings,
    load_policy,
    play_match,
    search_budget_name,
    tally,
)
from keisei.files import write_json_atomically
from keisei.kifu import to_csa, to_kif, write_game_files
from keisei.processes import die_with_parent
from keisei.shogi import Termination
from workers.engines import EngineError, GnuShogiPlayer, SearchLimit, UsiPlayer, UsiSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlayerSpec:
    """A player described in plain data, so a worker process can build it."""

    spec: str
    name: str
    options: dict[str, str] = field(default_factory=dict)
    depth: int | None = None
    nodes: int | None = None
    byoyomi_ms: int | None = None
    move_timeout: float = 30.0
    temperature: float = 0.0
    visits: int | None = None  # a checkpoint that searches: visits per move
    movetime_ms: int | None = None  # ... or milliseconds per move
    search_settings: tuple[str, ...] = ()  # "search.KEY=VALUE" overrides for that search
    mate_plies: int = ROOT_MATE_PLIES  # a checkpoint's policy player: see PolicyPlayer
    avoid_sennichite: bool = True  # likewise


def parse_spec(spec: str, *, name: str | None = None, options: dict[str, str] | None = None,
               depth: int | None = None, nodes: int | None = None, byoyomi_ms: int | None = None,
               move_timeout: float = 30.0) -> PlayerSpec:
    """A ``PlayerSpec`` for ``random``, ``greedy``, ``checkpoint:PATH``, ``usi:COMMAND`` or
    ``gnushogi:DEPTH``; the engine settings apply to ``usi:`` (and the timeout to both engines).

    :raises ValueError: naming what is wrong with ``spec``.
    """
    kind, _, argument = spec.partition(":")
    if kind in ("random", "greedy") and not argument:
        return PlayerSpec(spec, name or kind)
    if kind == "checkpoint" and argument:
        path, _, budget = argument.rpartition("@") if "@" in argument else (argument, "", "")
        visits, movetime_ms = parse_budget(budget) if budget else (None, None)
        default = Path(path).stem + (f" ({search_budget_name(visits, movetime_ms)})" if budget else "")
        return PlayerSpec(f"checkpoint:{path}", name or default, visits=visits,
                          movetime_ms=movetime_ms)
    if kind == "gnushogi":
        if not argument.isdigit() or not 1 <= int(argument) <= 29:
            raise ValueError(f"{spec!r}: gnushogi:DEPTH takes a depth from 1 to 29")
        return PlayerSpec(spec, name or f"gnushogi-d{argument}", move_timeout=move_timeout)
    if kind == "usi" and argument.strip():
        limit = SearchLimit(depth, nodes, byoyomi_ms)
        program = Path(argument.split()[0]).name
        return PlayerSpec(spec, name or f"{program} ({limit.describe()})", dict(options or {}),
                          depth, nodes, byoyomi_ms, move_timeout)
    raise ValueError(f"{spec!r} is not an opponent: use random, greedy, checkpoint:PATH[@VISITS|"
                     "@MSms], usi:COMMAND or gnushogi:DEPTH")


def parse_budget(text: str) -> tuple[int | None, int | None]:
    """``256`` (visits per move) or ``500ms`` (milliseconds per move) → (visits, ms).

    :raises ValueError: naming the budget that does not parse.
    """
    number = text.removesuffix("ms")
    if not number.isdigit() or int(number) < 1:
        raise ValueError(f"search budget {text!r}: expected VISITS (e.g. 256) or MSms (e.g. 500ms)")
    return (None, int(number)) if text.endswith("ms") else (int(number), None)


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--usi-option {pair!r}: expected NAME=VALUE")
        options[key.strip()] = value.strip()
    return options


def with_search_settings(rungs: list[tuple[PlayerSpec, str | None]],
                         settings: Sequence[str]) -> list[tuple[PlayerSpec, str | None]]:
    """``--opponent-set``: ``settings`` for every searching checkpoint among ``rungs``, its
    name saying so as the evaluated checkpoint's does.

    :raises ValueError: where no opponent searches.
    """
    searching = [spec for spec, _ in rungs
                 if spec.spec.startswith("checkpoint:") and (spec.visits or spec.movetime_ms)]
    if not searching:
        raise ValueError("--opponent-set applies to a searching opponent: give one as "
                         "checkpoint:PATH@VISITS or checkpoint:PATH@MSms")
    suffix = "".join(f", {setting.strip().removeprefix('search.')}" for setting in settings)
    return [(replace(spec, search_settings=tuple(settings), name=spec.name.removesuffix(")")
                     + suffix + ")") if spec in searching else spec, skipped)
            for spec, skipped in rungs]


def build_player(spec: PlayerSpec, device: str = "cpu") -> Player:
    """The player ``spec`` describes (loading its checkpoint or starting its engine lazily).

    :raises CheckpointError: for an unusable checkpoint.
    :raises EngineError: for an engine program that cannot be found.
    """
    kind, _, argument = spec.spec.partition(":")
    if kind == "random":
        return RandomPlayer(spec.name)
    if kind == "greedy":
        return GreedyPlayer(spec.name)
    if kind == "checkpoint":
        model, _ = load_policy(argument, device)
        if spec.visits or spec.movetime_ms:
            movetime = spec.movetime_ms / 1000 if spec.movetime_ms else None
            config = load_search_config(None, spec.search_settings) if spec.search_settings else None
            return SearchPlayer(model, spec.name, visits=spec.visits, movetime=movetime,
                                config=config, device=device)
        return PolicyPlayer(model, spec.name, temperature=spec.temperature, device=device,
                            mate_plies=spec.mate_plies, avoid_sennichite=spec.avoid_sennichite)
    if kind == "gnushogi":
        return GnuShogiPlayer(int(argument), move_timeout=spec.move_timeout, name=spec.name)
    limit = SearchLimit(spec.depth, spec.nodes, spec.byoyomi_ms)
    return UsiPlayer(UsiSettings(argument, dict(spec.options), limit, spec.move_timeout,
                                 name=spec.name))


# --- the ladder ------------------------------------------------------------------------------
LADDER: tuple[PlayerSpec, ...] = (
    parse_spec("random"),
    parse_spec("greedy"),
    parse_spec("usi:fairy-stockfish", name="fsf-skill-20-d1", options={"Skill Level": "-20"}, depth=1),
    parse_spec("usi:fairy-stockfish", name="fsf-d1", depth=1),
    parse_spec("gnushogi:1", name="gnushogi-d1"),
    parse_spec("usi:sjaakii", name="sjaak-d2", depth=2),
    parse_spec("usi:fairy-stockfish", name="fsf-d3", depth=3),
    parse_spec("gnushogi:3", name="gnushogi-d3"),
    parse_spec("usi:fairy-stockfish", name="fsf-d6", depth=6),
    parse_spec("usi:gpsusi", name="gps-ld4-100ms", options={"LimitDepth": "4"}, byoyomi_ms=100),
)
"""Weak to strong, as measured on this project's machines (small samples: an order, not Elo)."""


def ladder_specs() -> list[tuple[PlayerSpec, str | None]]:
    """Each rung, with why it is skipped (its engine is not installed) or None."""
    rungs = []
    for spec in LADDER:
        try:
            build_player(spec).close()
            skipped = None
        except EngineError as exc:
            skipped = str(exc)
        rungs.append((spec, skipped))
    return rungs


# --- playing ---------------------------------------------------------------------------------
@dataclass
class MatchGame:
    """What a worker sends back about one game."""

    index: int
    opening: int
    names: tuple[str, str]
    first_points: float
    plies: int
    reason: str
    kif: str
    csa: str


def record_of(item: PlayedGame) -> MatchGame:
    game = item.game
    assert game.outcome is not None
    return MatchGame(item.index, item.opening, item.names,
                      item.first_points, game.ply, str(game.outcome.reason),
                      to_kif(game, item.names), to_csa(game, item.names))


@dataclass(frozen=True)
class Task:
    first: PlayerSpec
    second: PlayerSpec
    openings: list[tuple[str, ...]]
    pairs: list[int]
    seed: int
    max_plies: int
    device: str


def run_task(task: Task) -> list[MatchGame]:
    """Play ``task``'s pairs (in this process or a pool worker)."""
    first = build_player(task.first, task.device)
    try:
        second = build_player(task.second, task.device)
        try:
            played = play_match(first, second, task.openings, task.pairs, seed=task.seed,
                                max_plies=task.max_plies)
        finally:
            second.close()
    finally:
        first.close()
    return [record_of(item) for item in played]


def _init_worker(threads: int, parent: int) -> None:
    die_with_parent(parent)  # a keisei-eval stopped by a signal takes its workers with it
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s "
                        "%(message)s", force=True)


def play(first: PlayerSpec, second: PlayerSpec, games: int, *, workers: int, seed: int,
         max_plies: int, openings: list[tuple[str, ...]], device: str,
         pool: multiprocessing.pool.Pool | None) -> list[MatchGame]:
    """``games`` (rounded up to even) games, split by pairs over ``workers`` processes."""
    pairs = list(range((games + 1) // 2))
    chunks = [pairs[start::workers] for start in range(workers) if pairs[start::workers]]
    tasks = [Task(first, second, openings, chunk, seed, max_plies, device) for chunk in chunks]
    results = pool.map(run_task, tasks) if pool is not None else [run_task(task) for task in tasks]
    return sorted((record for chunk in results for record in chunk), key=lambda record: record.index)


def write_games(folder: Path, records: Sequence[MatchGame]) -> None:
    """``NNNN-BLACK-vs-WHITE.kif`` (cp932, for GUIs) and ``.csa`` (UTF-8) per game."""
    folder.mkdir(parents=True, exist_ok=True)
    for record in records:
        stem = folder / f"{record.index:04d}-{_slug(record.names[0])}-vs-{_slug(record.names[1])}"
        write_game_files(stem, record.kif, record.csa)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "player"


def format_elo(result: MatchResult) -> str:
    """``+191 [+119, +282]``: the estimate and its 95% interval (``keisei.elo``)."""
    return elo.format_elo(result.wins, result.draws, result.losses)


def print_table(name: str, rows: Sequence[tuple[str, MatchResult | None, str]]) -> None:
    """One line per opponent: games, +wins =draws -losses, score, Elo of ``name`` minus theirs."""
    width = max([len("opponent")] + [len(opponent) for opponent, _, _ in rows])
    print(f"{name} against:")
    print(f"{'opponent':<{width}} {'games':>5} {'+':>4} {'=':>4} {'-':>4} {'score':>6}  Elo difference [95% interval]")
    for opponent, result, note in rows:
        if result is None:
            print(f"{opponent:<{width}} {'':>5} {'':>4} {'':>4} {'':>4} {'':>6}  {note}")
            continue
        print(f"{opponent:<{width}} {result.games:>5} {result.wins:>4} {result.draws:>4} "
              f"{result.losses:>4} {result.score:>6.3f}  {format_elo(result)}{'  ' + note if note else ''}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keisei-eval", description="Play a Keisei checkpoint against opponents and estimate Elo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="opponents: random | greedy | checkpoint:PATH[@VISITS|@MSms] | usi:COMMAND | "
               "gnushogi:DEPTH\n"
               "ladder rungs (weak to strong, those installed): "
               + ", ".join(spec.name for spec in LADDER))
    parser.add_argument("--checkpoint", required=True,
                        help="the Keisei checkpoint to evaluate, or a run directory (its newest)")
    parser.add_argument("--name", help="its name in records and tables (default: the file name)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--opponent", action="append", metavar="SPEC", help="repeatable")
    target.add_argument("--ladder", action="store_true", help="play every installed ladder rung")
    parser.add_argument("--games", type=int, default=32, help="games per opponent, rounded up to even")
    parser.add_argument("--workers", type=int, default=1, help="processes that play in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same games")
    parser.add_argument("--max-plies", type=int, default=320, help="a game this long is a draw")
    parser.add_argument("--visits", type=int, metavar="N",
                        help="the checkpoint searches N visits per move (keisei.search; "
                             "default: it plays its policy's best move)")
    parser.add_argument("--movetime", type=int, metavar="MS",
                        help="the checkpoint searches MS milliseconds per move (with --visits: "
                             "at most that many)")
    parser.add_argument("--set", metavar="search.KEY=VALUE", action="append", default=[],
                        dest="search_settings",
                        help="one [search] setting for the checkpoint's search (repeatable; "
                             "with --visits or --movetime), e.g. search.c_puct=2")
    parser.add_argument("--opponent-set", metavar="search.KEY=VALUE", action="append", default=[],
                        dest="opponent_search_settings",
                        help="one [search] setting for every searching checkpoint opponent "
                             "(checkpoint:PATH@VISITS or @MSms; repeatable), e.g. "
                             "search.policy_temperature=1.5")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sample the checkpoint's moves at this temperature (0: best move)")
    parser.add_argument("--mate-plies", type=int, default=ROOT_MATE_PLIES, metavar="N",
                        help="without a search, the checkpoint plays a forced mate of at most "
                             f"N plies when cshogi finds one, as its search does at the root "
                             f"(default {ROOT_MATE_PLIES}; 0: never)")
    parser.add_argument("--allow-sennichite", action="store_true",
                        help="without a search, the checkpoint plays its policy's move even "
                             "when it gives perpetual check, or repeats a position while its "
                             "value says it is ahead (by default it takes its next choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--openings", metavar="FILE",
                        help="USI move lines from the start position (default: Keisei's set)")
    parser.add_argument("--output", metavar="DIR",
                        help="folder for KIF/CSA records and results.json "
                             "(default: eval/NAME-YYYYmmdd-HHMMSS)")
    add_engine_arguments(parser, "usi: opponents", "go depth N")
    return add_version(parser)


def add_engine_arguments(parser: argparse.ArgumentParser, title: str, depth_help: str) -> None:
    """The ``usi:`` engine settings: ``--depth``, ``--nodes``, ``--byoyomi``,
    ``--usi-option``, ``--move-timeout`` (checked by ``check_arguments``)."""
    engine = parser.add_argument_group(title)
    engine.add_argument("--depth", type=int, help=depth_help)
    engine.add_argument("--nodes", type=int, help="go nodes N")
    engine.add_argument("--byoyomi", type=int, metavar="MS", help="go byoyomi MS (default 100 "
                        "when neither depth nor nodes is given)")
    engine.add_argument("--usi-option", action="append", default=[], metavar="NAME=VALUE",
                        help="setoption (repeatable), e.g. 'Skill Level=-20'")
    engine.add_argument("--move-timeout", type=float, default=30.0, metavar="S",
                        help="an engine silent this long (plus byoyomi) forfeits the game")


def check_arguments(args: argparse.Namespace, at_least_one: Sequence[str]) -> list[str]:
    """Problems with the flags in ``at_least_one`` and the engine settings."""
    problems = []
    for flag in at_least_one:
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("depth", "nodes", "byoyomi"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag} must be at least 1")
    if args.move_timeout <= 0:
        problems.append("--move-timeout must be more than 0")
    return problems


def check_player(spec: PlayerSpec, device: str = "cpu") -> None:
    """Build and start the player once, so a wrong command or option fails before any game.

    :raises CheckpointError, EngineError: naming what is wrong.
    """
    player = build_player(spec, device)
    try:
        start = getattr(player, "start", None)
        if start is not None:
            start()
    finally:
        player.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    problems = check_arguments(args, ("games", "workers", "threads", "max_plies"))
    if args.temperature < 0:
        problems.append("--temperature must be >= 0")
    if not 0 <= args.mate_plies <= 15:
        problems.append("--mate-plies must be between 0 and 15")
    for flag in ("visits", "movetime"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1")
    if args.search_settings and not (args.visits or args.movetime):
        problems.append("--set applies to a search: give --visits or --movetime")
    else:
        try:
            load_search_config(None, args.search_settings)
        except ConfigError as exc:
            problems.append(str(exc))
    if args.opponent_search_settings:
        try:
            load_search_config(None, args.opponent_search_settings)
        except ConfigError as exc:
            problems.append(f"--opponent-set: {exc}")
    if problems:
        print("keisei-eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    settings = "".join(f", {setting.strip().removeprefix('search.')}"
                       for setting in args.search_settings)
    budget = (f" ({search_budget_name(args.visits, args.movetime)}{settings})"
              if args.visits or args.movetime else "")
    name = args.name or Path(args.checkpoint).stem + budget
    try:
        me = PlayerSpec(f"checkpoint:{args.checkpoint}", name, temperature=args.temperature,
                        visits=args.visits, movetime_ms=args.movetime,
                        search_settings=tuple(args.search_settings),
                        mate_plies=args.mate_plies, avoid_sennichite=not args.allow_sennichite)
        build_player(me, args.device).close()
        if args.ladder:
            rungs = ladder_specs()
        else:
            engine = {"options": parse_options(args.usi_option), "depth": args.depth,
                      "nodes": args.nodes, "byoyomi_ms": args.byoyomi,
                      "move_timeout": args.move_timeout}
            rungs = [(parse_spec(spec, **engine), None) for spec in args.opponent]
            for spec, _ in rungs:
                check_player(spec, args.device)
        if args.opponent_search_settings:
            rungs = with_search_settings(rungs, args.opponent_search_settings)
        text = Path(args.openings).read_text(encoding="utf-8") if args.openings else None
        openings = load_openings(text)
    except (CheckpointError, EngineError, IllegalMoveError, ValueError, OSError) as exc:
        print(f"keisei-eval: {exc}", file=sys.stderr)
        return 2
    random.Random(args.seed).shuffle(openings)
    output = Path(args.output or f"eval/{_slug(name)}-{time.strftime('%Y%m%d-%H%M%S')}")
    previous = {signum: signal.signal(signum, signal.default_int_handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return evaluate(args, me, rungs, openings, output)
    except KeiseiError as exc:
        logger.error("%s", exc)
        return ExitCode.FAILURE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def evaluate(args: argparse.Namespace, me: PlayerSpec, rungs: list[tuple[PlayerSpec, str | None]],
             openings: list[tuple[str, ...]], output: Path) -> int:
    rows: list[tuple[str, MatchResult | None, str]] = []
    pairings: list[Pairing] = []
    games: list[dict[str, object]] = []
    context = multiprocessing.get_context("spawn")
    pool = (context.Pool(args.workers, _init_worker, (args.threads, os.getpid())) if args.workers > 1 else None)
    unplayed = [spec.name for spec, skipped in rungs if skipped is None]
    interrupted = False
    try:
        for spec, skipped in rungs:
            if skipped is not None:
                rows.append((spec.name, None, f"skipped: {skipped}"))
                continue
            started = time.monotonic()
            records = play(me, spec, args.games, workers=args.workers, seed=args.seed,
                           max_plies=args.max_plies, openings=openings, device=args.device, pool=pool)
            write_games(output / _slug(spec.name), records)
            games += [{"opponent": spec.name, "index": record.index, "opening": record.opening,
                       "opening_moves": " ".join(openings[record.opening]),
                       "black": record.names[0], "white": record.names[1],
                       "points": record.first_points, "plies": record.plies, "reason": record.reason}
                      for record in records]
            result = tally(records)
            forfeits = sum(1 for record in records if record.reason == Termination.FORFEIT
                           and record.first_points == 1.0)
            note = f"({spec.name} forfeited {forfeits}: see the log)" if forfeits else ""
            rows.append((spec.name, result, note))
            pairings.append(Pairing(me.name, spec.name, result))
            unplayed.remove(spec.name)
            logger.info("%s vs %s: %s in %.0f s", me.name, spec.name, result,
                        time.monotonic() - started)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    print_table(me.name, rows)
    if interrupted:
        print(f"keisei-eval: interrupted; not played to the end: {', '.join(unplayed)}",
              file=sys.stderr, flush=True)
        if not pairings:
            return ExitCode.INTERRUPTED
    summary: dict[str, object] = {
        "player": me.name, "checkpoint": args.checkpoint, "seed": args.seed,
        "search": {"visits": me.visits, "movetime_ms": me.movetime_ms,
                   "settings": list(me.search_settings)},
        "games_per_opponent": 2 * ((args.games + 1) // 2),
        "pairings": [pairing.to_dict() for pairing in pairings],
        "opponents": [asdict(spec) for spec, skipped in rungs
                      if skipped is None and spec.name not in unplayed],
        "games": games}
    if interrupted:
        summary |= {"interrupted": True, "unplayed": unplayed}
    write_json_atomically(output / "results.json", summary)
    print(f"games and results.json in {output}")
    return ExitCode.INTERRUPTED if interrupted else ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
