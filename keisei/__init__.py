"""Keisei: distributed self-play PPO training for Shogi (the core library)."""

__version__ = "0.1.0"
