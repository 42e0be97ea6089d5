"""Keisei: distributed self-play PPO training for Shogi (the core library)."""

import os

# numpy's OpenBLAS would start a thread per core that spins after each small product
# (material balance, for instance), taking a core from the learner's server thread and
# from torch; Keisei's heavy arithmetic is torch's. Set before numpy loads; a user's own
# OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
