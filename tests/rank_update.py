"""One PPO update on one rank of several, for the 1-rank/N-rank equivalence test.

Run with torchrun's variables set (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
``python tests/rank_update.py DATA.pt OUT.pt CONFIG_OVERRIDES...``. DATA.pt holds the
initial weights and a whole epoch; rank r trains on the r-th of WORLD_SIZE equal slices
(``learner.ranks.split_buffer``), and rank 0 writes the weights and the update's figures.
"""

from __future__ import annotations

import sys
import threading

import torch

from keisei.config import load_config
from learner.buffer import EpochBatch
from learner.launch import RankInfo
from learner.ranks import Ranks, split_buffer
from learner.trainer import Trainer


def main() -> None:
    data_path, out_path, *overrides = sys.argv[1:]
    info = RankInfo.from_env()
    assert info is not None
    data = torch.load(data_path, weights_only=False)
    config = load_config(None, overrides)
    with Ranks(info, torch.device("cpu"), 60.0) as ranks:
        trainer = Trainer.build(config, threading.Event(), 1, ranks=ranks)
        trainer.model.load_state_dict(data["model"])
        share = split_buffer(data["batch"], info.world)[info.rank]
        batch = EpochBatch(**{name: tensor.numpy() for name, tensor in share.items()})
        figures = trainer._ppo(batch)
        if ranks.is_main:
            torch.save({"model": trainer.model.state_dict(), "figures": figures}, out_path)
        ranks.barrier()


if __name__ == "__main__":
    main()
