"""The learner's world: one process, or several training one network as one.

A run with ``WORLD_SIZE`` > 1 in its environment (``torchrun``, or ``keisei-learner
--ranks N``, which sets the same variables) is one *rank* of a multi-rank learner. Each
rank is a whole ``learner.app.Learner``: its own ROUTER and PUB (the base port + 2 × rank),
its own buffer shard, local actors and supervisor. A single process is the same thing
with a world of one (``Alone``), whose collectives return their input. The ranks meet
only where they must:

- the update: every rank trains ``train.steps_per_epoch / N`` steps in minibatches of
  ``train.minibatch_size / N``, so they run the same number of minibatches; gradients,
  batch-norm statistics and the advantage normalisation are reduced over all ranks, so
  one update of N ranks is the update one rank would make on the union of their data;
  the KL early stop, a stop request and a non-finite update are decided together
  (``World``);
- start-up, the epoch's end and checkpoints (``learner.ranks.shards``);
- stopping: a stop requested on any rank is agreed at the next minibatch, or at the
  next epoch's start.

``world`` holds the collectives, ``batch_norm`` the synchronised batch norm, ``shards``
what the run's state is across the ranks.
"""

from learner.launch import RankInfo, check_divisible, rank_bind
from learner.ranks.batch_norm import RankBatchNorm2d, synchronise_batch_norm
from learner.ranks.collective import RankFailed
from learner.ranks.shards import (
    checkpoint_state,
    deal_start,
    gather_epoch,
    merge_shards,
    resume_shares,
    split_buffer,
)
from learner.ranks.world import Alone, Ranks, Verdict, World, weights_checksum

__all__ = ["Alone", "RankBatchNorm2d", "RankFailed", "RankInfo", "Ranks",
           "Verdict", "World", "check_divisible", "checkpoint_state", "deal_start",
           "gather_epoch", "merge_shards", "rank_bind", "resume_shares", "split_buffer",
           "synchronise_batch_norm", "weights_checksum"]
