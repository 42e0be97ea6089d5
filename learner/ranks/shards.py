"""The run's state across the members of a world: who starts from what, what a
checkpoint holds, what an epoch's report says.

- start-up: every member starts from member 0's state: a resumed checkpoint (its waiting
  steps dealt out in equal shares, whatever number of ranks wrote it), an
  ``--init-from`` network, or member 0's fresh weights (``deal_start``,
  ``resume_shares``); a problem on member 0 ends every member;
- checkpoints: member 0 writes them with every shard's waiting steps
  (``checkpoint_state``);
- the epoch's end: member 0 gathers each member's counts for ``metrics.jsonl`` and,
  every ``ranks.checksum_every`` epochs, a checksum of every member's weights
  (``gather_epoch``).

A world of one goes through the same functions; where there is nothing to gather they
return what they were given, so a single process writes what it always wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from keisei.checkpoint import CheckpointError
from keisei.config import ConfigError
from learner.ranks.world import World, weights_checksum
from learner.reports import REPORTED_ACTORS, ActorsReport, EpochReport, Ledger, RanksReport

if TYPE_CHECKING:
    from learner.trainer import Trainer

logger = logging.getLogger(__name__)



# --- the buffer's waiting steps across ranks ----------------------------------------------
def merge_shards(shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One buffer state from every rank's (``{"buffer": columns, "sources": names}``), in
    rank order, with the ``sources`` column re-indexed into one list of names."""
    names: list[str] = []
    index: dict[str, int] = {}
    columns: dict[str, list[torch.Tensor]] = {}
    for shard in shards:
        remap = []
        for name in shard["sources"]:
            if name not in index:
                index[name] = len(names)
                names.append(name)
            remap.append(index[name])
        for key, tensor in shard["buffer"].items():
            if key == "sources" and len(tensor):
                tensor = torch.from_numpy(np.asarray(remap, dtype=np.int16)[tensor.numpy().astype(np.int64)])
            columns.setdefault(key, []).append(tensor)
    return {"buffer": {key: torch.cat(parts) for key, parts in columns.items()}, "sources": names}


def split_buffer(buffer: Mapping[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """``buffer``'s steps in ``parts`` contiguous shares, oldest first, as equal as can be."""
    held = len(next(iter(buffer.values()))) if buffer else 0
    bounds = np.linspace(0, held, parts + 1).round().astype(int)
    return [{key: tensor[bounds[part]:bounds[part + 1]].clone() for key, tensor in buffer.items()}
            for part in range(parts)]


# --- start-up -----------------------------------------------------------------------------
def deal_start(world: World, make_parts: Callable[[], list[dict[str, Any]]],
               problem: Exception | None) -> dict[str, Any]:
    """This member's part of what member 0 makes (``make_parts``: one dict per member).

    ``problem`` is this member's own trouble with the run directory: member 0 tells the
    others of its own before raising it, the others raise theirs once member 0 has dealt.

    :raises ConfigError: on the other members, naming member 0's problem.
    """
    parts: list[dict[str, Any]] | None = None
    if world.is_main:
        try:
            if problem is not None:
                raise problem
            parts = make_parts()
        except (ConfigError, CheckpointError, OSError) as exc:
            world.scatter([{"problem": str(exc)}] * world.size)
            raise
    mine: dict[str, Any] = world.scatter(parts)
    if "problem" in mine:
        raise ConfigError([f"rank 0 could not start the run: {mine['problem']}"])
    if problem is not None:
        raise problem
    return mine


def resume_shares(state: dict[str, Any], checkpoint: Path, size: int) -> list[dict[str, Any]]:
    """A checkpoint's state dealt out to ``size`` members: each its share of the waiting
    steps, the run's totals and ratings with member 0."""
    saved = int(state.get("ranks", 1))
    if size > 1 or saved > 1:
        logger.info("resuming %s (written by %d rank%s) on %d ranks: %d waiting steps dealt "
                    "out in equal shares", checkpoint, saved, "s" * (saved != 1), size,
                    len(state["buffer"].get("actions", ())))
    shares = split_buffer(state["buffer"], size) if size > 1 else [state["buffer"]]
    parts = []
    for rank, share in enumerate(shares):
        own = {**state, "buffer": share}
        if rank:
            own["counters"] = {**state["counters"], "games": 0, "steps_dropped_stale": 0,
                               "steps_dropped_non_finite": 0}
            own.pop("ratings", None)
        parts.append({"state": own, "resumed_from": [str(checkpoint)]})
    return parts


# --- checkpoints --------------------------------------------------------------------------
def checkpoint_state(world: World, trainer: Trainer,
                     state: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]] | None:
    """On member 0, what a checkpoint holds: ``state`` (its own) with every member's
    waiting steps and counts; None on the others. Every member calls it at the same point."""
    shards = world.all_gather(trainer.shard_state()) if world.size > 1 else []
    if not world.is_main:
        return None
    if not shards:
        return state

    def merged_state() -> dict[str, Any]:
        merged = merge_shards(shards)
        full = state()
        counters = {**full["counters"], "sources": merged["sources"],
                    "games": sum(shard["games"] for shard in shards),
                    "steps_dropped_stale": sum(shard["stale"] for shard in shards),
                    "steps_dropped_non_finite": sum(shard["non_finite"] for shard in shards)}
        return {**full, "buffer": merged["buffer"], "counters": counters, "ranks": world.size}
    return merged_state


# --- the epoch's report -------------------------------------------------------------------
def gather_epoch(world: World, report: EpochReport, trainer: Trainer,
                 checksum_every: int) -> EpochReport:
    """Every member's part of the epoch in member 0's report: the ledger per rank and in
    total, the actors of all ranks, and (every ``checksum_every`` epochs) a checksum of
    each rank's weights. Weights that differ are logged and replaced by rank 0's on every
    rank. A world of one has nothing to gather: its report is returned as it is."""
    if world.size == 1:
        return report
    checksum = (weights_checksum(trainer.model)
                if checksum_every and trainer.epoch % checksum_every == 0 else None)
    parts = world.all_gather({"ledger": report.ledger, "actors": report.actors,
                              "mode": str(report.mode), "checksum": checksum})
    agree = None
    if checksum is not None:
        agree = len({part["checksum"] for part in parts}) == 1
        if not agree:
            logger.error("epoch %d: the ranks' weights differ (checksums %s); every rank "
                         "takes rank 0's", trainer.epoch,
                         ", ".join(f"rank {rank} {part['checksum']}" for rank, part in enumerate(parts)))
            state = world.broadcast({"model": trainer.model.state_dict(),
                                     "optimizer": trainer.optimizer.state_dict()})
            trainer.model.load_state_dict(state["model"])
            trainer.optimizer.load_state_dict(state["optimizer"])
    ledgers = [part["ledger"] for part in parts]
    total = Ledger(sum(item.carried for item in ledgers), sum(item.received for item in ledgers),
                   sum(item.trained for item in ledgers),
                   {reason: sum(item.dropped[reason] for item in ledgers) for reason in ledgers[0].dropped},
                   sum(item.waiting for item in ledgers))
    rows = [{**row, "rank": rank} for rank, part in enumerate(parts) if part["actors"] is not None
            for row in part["actors"].actors]
    actors = report.actors
    reported = [part["actors"] for part in parts if part["actors"] is not None]
    if reported:
        actors = ActorsReport(
            sorted(rows, key=lambda row: float(row["seconds_since_heard"]))[:REPORTED_ACTORS],
            sum(item.actor_steps_per_second for item in reported),
            sum_counts(item.wire for item in reported),
            sum_counts(item.actor_states for item in reported))
    return replace(report, ledger=total, actors=actors, ranks=RanksReport(
        world.size, ledgers, [part["mode"] for part in parts], checksum, agree))


def sum_counts(parts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for name, count in part.items():
            total[name] = total.get(name, 0) + int(count)
    return total
