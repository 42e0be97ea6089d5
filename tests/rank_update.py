"""One PPO update on one rank of several, for the 1-rank/N-rank equivalence test.

Run with torchrun's variables set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
``python tests/rank_update.py DATA.pt OUT.pt CONFIG_OVERRIDES...``. DATA.pt holds the
initial weights and a whole epoch; rank r trains on the r-th of WORLD_SIZE equal slices
(``learner.ranks.split_buffer``), and rank 0 writes what ``updates`` measured.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import torch

from keisei.config import load_config
from learner.buffer import EpochBatch
from learner.launch import RankInfo
from learner.ranks import Ranks, World, split_buffer
from learner.trainer import Trainer


def updates(config_overrides: list[str], initial: dict[str, torch.Tensor],
            columns: dict[str, torch.Tensor], world: World | None = None) -> dict[str, Any]:
    """This member's share of ``columns`` trained from ``initial`` twice: once with plain
    SGD, whose step is linear in the gradient, so float rounding stays at rounding's
    size; once with the configured AdamW. For each: the gradients every optimizer step
    received (after the reduction over the members, before clipping), the figures of the
    update, and the weights after it."""
    config = load_config(None, config_overrides)
    trainer = Trainer.build(config, threading.Event(), 1, world=world)
    share = split_buffer(columns, trainer.world.size)[trainer.world.rank]
    batch = EpochBatch(**{name: tensor.numpy() for name, tensor in share.items()})
    original_step = trainer._step
    out: dict[str, Any] = {}
    for name in ("sgd", "adam"):
        trainer.model.load_state_dict(initial)
        if name == "sgd":
            trainer.optimizer = torch.optim.SGD(trainer.model.parameters(),
                                                lr=config.train.learning_rate)
        else:
            trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(),
                                                  lr=config.train.learning_rate,
                                                  weight_decay=config.train.weight_decay)
        gradients: list[list[torch.Tensor]] = []

        def recording(parameters: list[torch.nn.Parameter], *args: Any,
                      gradients: list[list[torch.Tensor]] = gradients) -> Any:
            gradients.append([parameter.grad.detach().clone() for parameter in parameters
                              if parameter.grad is not None])
            return original_step(parameters, *args)

        trainer._step = recording  # type: ignore[method-assign]
        figures = trainer._ppo(batch)
        out[name] = {"figures": figures, "gradients": gradients,
                     "model": {key: value.clone() for key, value in trainer.model.state_dict().items()}}
    return out


def main() -> None:
    data_path, out_path, *overrides = sys.argv[1:]
    info = RankInfo.from_env()
    assert info is not None
    data = torch.load(data_path, weights_only=False)
    with Ranks(info, torch.device("cpu"), 60.0) as ranks:
        result = updates(overrides, data["model"], data["batch"], ranks)
        if ranks.is_main:
            torch.save(result, out_path)


if __name__ == "__main__":
    main()
