"""A collective call whose failure (a peer gone, a timeout) reads as ``RankFailed``."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


class RankFailed(RuntimeError):
    """Another rank left the job (a collective failed); training cannot go on."""



def collective(function: Any, *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, a collective; its failure as ``RankFailed``."""
    try:
        return function(*args, **kwargs)
    except (RuntimeError, ValueError) as exc:  # gloo's "connection closed", a timeout
        rank = dist.get_rank() if dist.is_initialized() else -1
        raise RankFailed(f"rank {rank}: a collective with the other ranks failed "
                         f"(another rank stopped or is unreachable): {exc}") from exc
