"""Several learner processes as one: data-parallel PPO on ``torch.distributed``.

A run with ``WORLD_SIZE`` > 1 in its environment (``torchrun``, or ``keisei-learner
--ranks N``, which sets the same variables) is one *rank* of a multi-rank learner. Each
rank is a whole ``learner.app.Learner``: its own ROUTER and PUB (the base port + 2 × rank),
its own buffer shard, local actors and supervisor. The ranks meet only where they must:

- the update: every rank trains ``train.steps_per_epoch / N`` steps in minibatches of
  ``train.minibatch_size / N``, so they run the same number of minibatches; gradients,
  batch-norm statistics and the advantage normalisation are reduced over all ranks, so
  one update of N ranks is the update one rank would make on the union of their data;
  the KL early stop and a non-finite update are decided together (``Ranks``);
- the epoch's end: rank 0 gathers each rank's counts for ``metrics.jsonl`` and, every
  ``ranks.checksum_every`` epochs, a checksum of every rank's weights;
- checkpoints: rank 0 writes them with every shard's waiting steps; a resume (with any
  number of ranks) deals those steps out again in equal parts;
- stopping: a stop requested on any rank is agreed at the next epoch's start.

Every rank calls the collectives here in the same order; that order is the protocol.
Gloo carries everything on CPU; with CUDA, NCCL carries device tensors (one device per
rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from learner.launch import RankInfo, check_divisible, rank_bind

__all__ = ["RankFailed", "RankInfo", "Ranks", "check_divisible", "merge_shards", "rank_bind",
           "split_buffer", "synchronise_batch_norm", "weights_checksum"]

logger = logging.getLogger(__name__)

class RankFailed(RuntimeError):
    """Another rank left the job (a collective failed); training cannot go on."""


class Ranks:
    """The process group of a multi-rank learner and the collectives it uses (a context
    manager). Every method is a collective: all ranks call it, in the same order.

    Failures of a peer (its process gone, a timeout) surface as ``RankFailed``.
    """

    def __init__(self, info: RankInfo, device: torch.device, timeout: float) -> None:
        self.info = info
        self.rank, self.world = info.rank, info.world
        self.device = device
        self.timeout = timeout
        self.backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        self.broken = False  # a collective failed: the group is of no more use

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> Ranks:
        dist.init_process_group(self.backend, rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=self.timeout))
        logger.info("rank %d of %d joined (%s, pid %d)", self.rank, self.world, self.backend,
                    os.getpid())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None and not self.broken:  # leave together: none tears down while
            # another still talks
            try:
                self.barrier()
            except RankFailed as exc:
                logger.warning("%s", exc)
        try:
            dist.destroy_process_group()
        except Exception as exc:  # a peer already gone: nothing left to tidy
            logger.debug("destroy_process_group: %s", exc)

    # --- objects ------------------------------------------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        box = [value if self.is_main else None]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def scatter(self, values: Sequence[Any] | None) -> Any:
        """Rank r's item of rank 0's ``values`` (one per rank; ignored elsewhere)."""
        out: list[Any] = [None]
        self._call(dist.scatter_object_list, out, list(values) if self.is_main and values else None,
                   src=0)
        return out[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        self._call(dist.all_gather_object, out, value)
        return out

    # --- numbers ------------------------------------------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64)
        self._call(dist.all_reduce, tensor)
        return tensor.tolist()

    def mean(self, values: Sequence[float]) -> list[float]:
        return [value / self.world for value in self.sum(values)]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (an agreed decision)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def reduce_gradients(self, parameters: Sequence[nn.Parameter], finite: bool) -> bool:
        """Average the gradients over the ranks (in place); return whether every rank's
        loss was finite (the gradients may be NaN where one was not)."""
        grads = [parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
                 for parameter in parameters]
        flat = torch.cat([grad.reshape(-1).float() for grad in grads]
                         + [torch.tensor([0.0 if finite else 1.0], device=grads[0].device)])
        self._call(dist.all_reduce, flat)
        flat /= self.world
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            count = grad.numel()
            chunk = flat[offset:offset + count].view_as(grad).to(grad.dtype)
            if parameter.grad is None:
                parameter.grad = chunk.clone()
            else:
                parameter.grad.copy_(chunk)
            offset += count
        return bool(flat[-1].item() == 0)

    def barrier(self) -> None:
        self._call(dist.barrier)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return _collective(function, *args, **kwargs)
        except RankFailed:
            self.broken = True
            raise


def weights_checksum(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _collective(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, a collective; its failure as ``RankFailed``."""
    try:
        return function(*args, **kwargs)
    except (RuntimeError, ValueError) as exc:  # gloo's "connection closed", a timeout
        rank = dist.get_rank() if dist.is_initialized() else -1
        raise RankFailed(f"rank {rank}: a collective with the other ranks failed "
                         f"(another rank stopped or is unreachable): {exc}") from exc


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks, with its gradient (the sum of theirs)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        _collective(dist.all_reduce, total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        _collective(dist.all_reduce, total)
        return total


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    result: torch.Tensor = _SumOverRanks.apply(tensor)  # type: ignore[no-untyped-call]
    return result


class RankBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the whole minibatch over all
    ranks (what ``SyncBatchNorm`` does, which refuses CPU tensors). Two passes: the mean,
    then the variance around it, each summed over the ranks with autograd; evaluation
    and a single process use the plain layer. Its state is ``BatchNorm2d``'s."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Module's name)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        x = input.float()
        local = x.numel() // x.shape[1]
        sums = sum_over_ranks(torch.cat([x.sum((0, 2, 3)), x.new_tensor([float(local)])]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = x - mean[None, :, None, None]
        squares = (centred * centred).sum((0, 2, 3))
        variance = sum_over_ranks(squares) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = variance.detach() * count / (count - 1).clamp(min=1)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(variance + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(input.dtype)


def synchronise_batch_norm(model: nn.Module) -> int:
    """Make every ``BatchNorm2d`` of ``model`` a ``RankBatchNorm2d`` (same state); return
    how many there were."""
    count = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = RankBatchNorm2d
            count += 1
    return count


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


