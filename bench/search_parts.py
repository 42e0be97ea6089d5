"""Which half of a searching player carries its strength: the prior or the value.

A search leans on two things, the policy's priors (where its visits go) and the value
(what a leaf is worth). This bench builds searchers that take the two from different
places and plays each against one opponent (Fairy-Stockfish depth 1 by default), so a
weak player's fault can be put on the right half:

- ``--prior``: ``uniform`` (every legal move alike) or the prior a checkpoint's own search
  uses (its policy, or its prior head with ``model.prior_head``);
- ``--value``: ``material`` (``tanh(balance / --scale)`` from the mover's view, exact:
  pawn 1 … rook 10, on the board and in hand, as ``keisei.encoding.PIECE_VALUES``) or a
  checkpoint's value head.

Give several of each: every combination is played, ``--games`` in colour-swapped pairs from
the shipped openings, each searching ``--visits`` a move (the search's defaults otherwise,
no noise), split over ``--workers`` processes of one torch thread.

Usage: python -m bench.search_parts --prior uniform --prior A.pt --value material
       --value B.pt [--visits 256] [--games 100] [--workers 2] [--opponent usi:fairy-stockfish]
       [--depth 1]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from keisei.encoding import NUM_ACTIONS, material_weights
from keisei.evaluation import MatchResult, SearchPlayer, load_openings, load_policy, play_match
from keisei.model import PolicyValueNet
from keisei.processes import die_with_parent
from workers.evaluate import PlayerSpec, build_player, parse_spec


class PartsNet(nn.Module):
    """Logits from ``prior`` (``None``: all zero, a uniform prior); the value from ``value``
    (``None``: ``tanh(material balance / scale)``)."""

    def __init__(self, prior: PolicyValueNet | None, value: nn.Module | None, scale: float) -> None:
        super().__init__()
        self.prior = prior
        self.value = value
        self.scale = scale
        self.register_buffer("weights", torch.from_numpy(material_weights()))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prior is None:
            logits = observations.new_zeros((observations.shape[0], NUM_ACTIONS))
        else:
            logits = self.prior.search_outputs(observations)[0]  # the prior head where it has one
        if self.value is None:
            values = torch.tanh(observations.flatten(1) @ self.weights / self.scale)
        else:
            values = self.value(observations)[1]
        return logits, values


def part(source: str) -> PolicyValueNet | None:
    """``uniform``/``material`` → None; a checkpoint → its network."""
    return None if source in ("uniform", "material") else load_policy(source)[0]


def label(source: str) -> str:
    return source if source in ("uniform", "material") else Path(source).stem


@dataclass(frozen=True)
class Task:
    prior: str
    value: str
    scale: float
    visits: int
    opponent: PlayerSpec
    pairs: list[int]
    seed: int


def run(task: Task) -> tuple[list[float], list[str]]:
    """Play ``task``'s pairs; each game's points for the searcher and how it ended."""
    torch.set_num_threads(1)
    net = PartsNet(part(task.prior), part(task.value), task.scale)
    me = SearchPlayer(net, "parts", visits=task.visits)
    opponent = build_player(task.opponent)
    try:
        played = play_match(me, opponent, load_openings(), task.pairs, seed=task.seed)
    finally:
        opponent.close()
    return ([item.first_points for item in played],
            [str(item.game.outcome.reason) if item.game.outcome else "unfinished" for item in played])


def check_source(source: str, allowed: str) -> str:
    if source != allowed and not Path(source).exists():
        raise argparse.ArgumentTypeError(f"{source!r} is neither {allowed!r} nor a checkpoint file")
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", action="append", type=lambda text: check_source(text, "uniform"),
                        help="uniform or a checkpoint (repeat for several)")
    parser.add_argument("--value", action="append", type=lambda text: check_source(text, "material"),
                        help="material or a checkpoint (repeat for several)")
    parser.add_argument("--scale", type=float, default=10.0, help="material's value scale")
    parser.add_argument("--visits", type=int, default=256)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--opponent", default="usi:fairy-stockfish")
    parser.add_argument("--depth", type=int, default=1, help="a usi: opponent's search depth")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.visits < 1 or args.games < 2 or args.workers < 1:
        parser.error("--visits and --workers take 1 or more, --games 2 or more")
    depth = args.depth if args.opponent.startswith("usi:") else None
    try:
        opponent = parse_spec(args.opponent, depth=depth)
    except ValueError as exc:
        parser.error(str(exc))
    pairs = list(range((args.games + 1) // 2))
    print(f"against {opponent.name}, {args.visits} visits a move, {len(pairs) * 2} games each")
    print(f"{'prior':<28} {'value':<28} {'score':>6}  {'+':>4} {'=':>3} {'-':>4}  Elo [95%]          endings")
    context = multiprocessing.get_context("spawn")
    for prior in args.prior or ["uniform"]:
        for value in args.value or ["material"]:
            tasks = [Task(prior, value, args.scale, args.visits, opponent, pairs[start::args.workers],
                          args.seed) for start in range(args.workers) if pairs[start::args.workers]]
            started = time.perf_counter()
            with context.Pool(len(tasks), initializer=die_with_parent,
                              initargs=(multiprocessing.current_process().pid,)) as pool:
                results = pool.map(run, tasks)
            points = [points for chunk in results for points in chunk[0]]
            reasons = [reason for chunk in results for reason in chunk[1]]
            result = MatchResult(points.count(1.0), points.count(0.5), points.count(0.0))
            low, high = result.elo_interval()
            endings = ", ".join(f"{reasons.count(reason)} {reason}" for reason in sorted(set(reasons)))
            print(f"{label(prior):<28} {label(value):<28} {result.score:6.3f}  {result.wins:4d} "
                  f"{result.draws:3d} {result.losses:4d}  [{low:+.0f}, {high:+.0f}]  {endings} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
