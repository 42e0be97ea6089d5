"""The learner's world: the processes that train one network together.

A single process is a world of one (``Alone``): its collectives return their input.
Several processes (``torchrun``, or ``keisei-learner --ranks N``) form a ``Ranks`` world
on ``torch.distributed``. The trainer and the learner speak to either through ``World``
and never ask which it is.

Every member of a world calls the collectives in the same order; that order is the
protocol. Gloo carries everything on CPU; with CUDA, NCCL carries device tensors (one
device per rank, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from learner.launch import RankInfo
from learner.ranks.batch_norm import synchronise_batch_norm
from learner.ranks.collective import RankFailed, collective

logger = logging.getLogger(__name__)


class Verdict(NamedTuple):
    """What every member agreed after a gradient reduction."""

    finite: bool  # every member's loss was finite
    stop: bool  # a stop was requested on some member


class World:
    """The collectives of a world of ``size`` members, seen from member ``rank`` (a
    context manager). Every method is a collective: all members call it, in the same
    order. This base class is the world of one; ``Ranks`` is several processes."""

    rank = 0
    size = 1
    broken = False  # a collective failed: the group is of no more use

    @property
    def is_main(self) -> bool:
        """Member 0 owns the run's files: metrics, ratings, checkpoints."""
        return self.rank == 0

    def __enter__(self) -> World:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        return None

    # --- objects ------------------------------------------------------------------------
    def broadcast(self, value: Any) -> Any:
        """Member 0's ``value``, on every member."""
        return value

    def scatter(self, values: Sequence[Any] | None) -> Any:
        """Member r's item of member 0's ``values`` (one per member; ignored elsewhere)."""
        assert values is not None and len(values) == 1
        return values[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every member's ``value``, in rank order, on every member."""
        return [value]

    # --- numbers ------------------------------------------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        return [float(value) for value in values]

    def mean(self, values: Sequence[float]) -> list[float]:
        return [value / self.size for value in self.sum(values)]

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any member (an agreed decision)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def reduce_gradients(self, parameters: Sequence[nn.Parameter], finite: bool,
                         stop: bool = False) -> Verdict:
        """Average the gradients over the members (in place); return whether every
        member's loss was finite (the gradients may be NaN where one was not) and whether
        any asked to stop."""
        return Verdict(finite, stop)

    def barrier(self) -> None:
        return None

    # --- the network --------------------------------------------------------------------
    def synchronise(self, model: nn.Module) -> None:
        """Make ``model``'s training statistics those of the whole world's minibatch."""
        return None


class Alone(World):
    """A single process: a world of one."""


class Ranks(World):
    """The process group of a multi-rank learner and the collectives it uses.

    Failures of a peer (its process gone, a timeout) surface as ``RankFailed``.
    """

    def __init__(self, info: RankInfo, device: torch.device, timeout: float) -> None:
        self.info = info
        self.rank, self.size = info.rank, info.world
        self.device = device
        self.timeout = timeout
        self.backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        self.broken = False

    def __enter__(self) -> Ranks:
        dist.init_process_group(self.backend, rank=self.rank, world_size=self.size,
                                timeout=timedelta(seconds=self.timeout))
        logger.info("rank %d of %d joined (%s, pid %d)", self.rank, self.size, self.backend,
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

    def broadcast(self, value: Any) -> Any:
        box = [value if self.is_main else None]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def scatter(self, values: Sequence[Any] | None) -> Any:
        out: list[Any] = [None]
        self._call(dist.scatter_object_list, out, list(values) if self.is_main and values else None,
                   src=0)
        return out[0]

    def all_gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self._call(dist.all_gather_object, out, value)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64)
        self._call(dist.all_reduce, tensor)
        result: list[float] = tensor.tolist()
        return result

    def reduce_gradients(self, parameters: Sequence[nn.Parameter], finite: bool,
                         stop: bool = False) -> Verdict:
        # a parameter the loss did not reach has no gradient on any member (they run the
        # same graph: train.value_passes leaves the value head out of later passes) and
        # keeps none, so the optimizer leaves it as it is, as in a world of one
        grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
        flags = torch.tensor([0.0 if finite else 1.0, 1.0 if stop else 0.0], device=grads[0].device)
        flat = torch.cat([grad.reshape(-1).float() for grad in grads] + [flags])
        self._call(dist.all_reduce, flat)
        verdict = Verdict(bool(flat[-2].item() == 0), bool(flat[-1].item() > 0))
        flat /= self.size
        offset = 0
        for grad in grads:  # in place: each is its parameter's gradient
            count = grad.numel()
            grad.copy_(flat[offset:offset + count].view_as(grad))
            offset += count
        return verdict

    def barrier(self) -> None:
        self._call(dist.barrier)

    def synchronise(self, model: nn.Module) -> None:
        synchronise_batch_norm(model)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return collective(function, *args, **kwargs)
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
