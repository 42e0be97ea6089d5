"""Batch norm whose training statistics are those of the whole minibatch over all ranks."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from learner.ranks.collective import collective


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks, with its gradient (the sum of theirs)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        collective(dist.all_reduce, total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        collective(dist.all_reduce, total)
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


