"""What a network knows, measured on held-out games: its policy's agreement with the moves
played and its value's agreement with the results.

For every position of the records (e.g. Fairy-Stockfish games from ``keisei-generate``
that no network trained on), it prints, per checkpoint: policy top-1 and top-3 agreement
with the move played, the probability the policy gave that move, and the value's sign
agreement with the game's result (from the mover's view; drawn and unfinished games
left out) with the value's mean squared error against the result, and the policy's mean
entropy over the legal moves (in nats): a policy sharpened by training leaves a search
fewer moves to look at. A network with a prior head (``model.prior_head``) gets a second
row, ``(prior head)``: the priors its search takes. Search multiplies what
the priors know: a policy far from strong play sends the search to the wrong moves.

Usage: python -m bench.diagnose RECORDS [RECORDS ...] --checkpoint A.pt [--checkpoint B.pt]
       [--positions N] [--skip-plies K]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from keisei.encoding import BatchEncoder, legal_actions
from keisei.evaluation import load_policy
from keisei.kifu import ReadStats, read_games
from keisei.model import PolicyValueNet, masked_logits
from keisei.shogi import Color, Game


@dataclass
class Position:
    game: Game  # at the position (a copy)
    played: int  # the move played there
    result: float  # +1 the mover won, -1 lost, 0 draw, nan unknown


def positions(paths: list[str], skip_plies: int, limit: int) -> Iterator[Position]:
    """The records' positions after the first ``skip_plies`` plies (openings), at most ``limit``."""
    count = 0
    for recorded in read_games(paths, ReadStats()):
        record = recorded.game
        outcome = record.outcome if recorded.result_known else None
        replay = Game(record.start_sfen, max_plies=max(record.ply + 1, 1))
        for ply, move in enumerate(record.moves):
            if ply >= skip_plies:
                mover = replay.side_to_move
                if outcome is None:
                    result = math.nan
                elif outcome.winner is None:
                    result = 0.0
                else:
                    result = 1.0 if outcome.winner is mover else -1.0
                yield Position(replay.copy(), move, result)
                count += 1
                if count >= limit:
                    return
            replay.push(move)


@dataclass
class Figures:
    positions: int
    top1: float
    top3: float
    played_probability: float
    value_sign: float
    value_mse: float
    decided: int
    entropy: float  # mean over the positions, nats


def measure(model: PolicyValueNet, items: list[Position], batch: int = 256,
            prior: bool = False) -> Figures:
    """The figures of ``model``'s policy head, or with ``prior`` of the priors its search
    takes (its prior head, ``model.prior_head``)."""
    encoder = BatchEncoder(batch)
    outputs = model.search_outputs if prior else model
    top1 = top3 = 0
    probability = entropy = 0.0
    values, results = [], []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        observations, masks = encoder.encode([item.game for item in chunk])
        with torch.inference_mode():
            logits, value = outputs(torch.from_numpy(observations))
            policy = torch.softmax(masked_logits(logits.float(), torch.from_numpy(masks)), dim=-1).numpy()
        for row, item in enumerate(chunk):
            action = int(legal_actions(item.game.board, [item.played])[0])
            ranking = np.argsort(-policy[row])
            top1 += int(ranking[0] == action)
            top3 += int(action in ranking[:3])
            probability += float(policy[row, action])
            row_policy = policy[row][policy[row] > 0]
            entropy -= float((row_policy * np.log(row_policy)).sum())
            if not math.isnan(item.result) and item.result != 0.0:
                values.append(float(value[row]))
                results.append(item.result)
    count = len(items)
    value_array, result_array = np.array(values), np.array(results)
    decided = len(values)
    return Figures(count, top1 / count, top3 / count, probability / count,
                   float((np.sign(value_array) == result_array).mean()) if decided else math.nan,
                   float(((value_array - result_array) ** 2).mean()) if decided else math.nan,
                   decided, entropy / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", nargs="+", help="CSA/KIF/USI files, folders or archives")
    parser.add_argument("--checkpoint", action="append", required=True, help="repeatable")
    parser.add_argument("--positions", type=int, default=5000)
    parser.add_argument("--skip-plies", type=int, default=8,
                        help="leave out each game's first plies (the shared openings)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    items = list(positions(args.records, args.skip_plies, args.positions))
    if not items:
        raise SystemExit("bench.diagnose: the records hold no position past --skip-plies")
    sides = sum(item.game.side_to_move is Color.BLACK for item in items)
    print(f"{len(items)} positions ({sides} with black to move) from {', '.join(args.records)}")
    print(f"{'checkpoint':<40} {'top-1':>6} {'top-3':>6} {'p(played)':>9} "
          f"{'value sign':>10} {'value mse':>9} {'entropy':>7} (decided positions)")
    for path in args.checkpoint:
        model, _ = load_policy(path)
        rows = [(path[-40:], False)]
        if model.prior_head is not None:  # and the prior its search takes
            rows.append(((path[-27:] + " (prior head)"), True))
        for name, prior in rows:
            figures = measure(model, items, prior=prior)
            print(f"{name:<40} {figures.top1:6.3f} {figures.top3:6.3f} "
                  f"{figures.played_probability:9.3f} {figures.value_sign:10.3f} "
                  f"{figures.value_mse:9.3f} {figures.entropy:7.3f} ({figures.decided})")


if __name__ == "__main__":
    main()
