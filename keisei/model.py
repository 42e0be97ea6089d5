"""The policy/value network: a residual tower with a convolutional policy head.

Input: ``(N, NUM_PLANES, 9, 9)`` float planes from ``keisei.encoding``. Output: policy
logits ``(N, NUM_ACTIONS)`` in action order (``plane * 81 + square``: the 27-channel 1×1
convolution laid out flat) and a value in [-1, 1] from the side to move's view.

Presets (measured on a 2-core CPU in ``DESIGN.md``): ``tiny`` 2×32 (0.08 M parameters,
fast tests and benchmarks), ``small`` 6×64 (0.52 M, the default), ``medium`` 10×128
(3.1 M, a GPU or a patient CPU), ``large`` 20×256 (GPU).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keisei.config import ModelConfig
from keisei.dataset import DecodedBatch
from keisei.encoding import NUM_ACTIONS, NUM_MOVE_PLANES, NUM_PLANES

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(blocks=2, channels=32),
    "small": ModelConfig(blocks=6, channels=64),
    "medium": ModelConfig(blocks=10, channels=128),
    "large": ModelConfig(blocks=20, channels=256, se_ratio=8, value_hidden=256),
}


class PolicyValue(NamedTuple):
    logits: torch.Tensor  # (N, NUM_ACTIONS), unmasked
    value: torch.Tensor  # (N,), tanh, side to move's view


class Heads(NamedTuple):
    """Every head's output from one pass through the tower (``PolicyValueNet.heads``)."""

    logits: torch.Tensor  # the policy head's, (N, NUM_ACTIONS), unmasked
    prior: torch.Tensor | None  # the prior head's (model.prior_head), else None
    value: torch.Tensor  # (N,)


def _normalisation(channels: int, norm: str) -> nn.Module:
    """A batch norm over ``channels``, or nothing for ``norm == "none"``."""
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with batch norm, optional squeeze-and-excitation, skip add.

    Without batch norm (``norm="none"``) the convolutions have biases and the block's
    branch is scaled by a learnt gate that starts at 0 (ReZero, Bachlechner et al. 2020),
    so a fresh tower is the identity and trains without normalisation."""

    def __init__(self, channels: int, se_ratio: int, norm: str = "batch") -> None:
        super().__init__()
        plain = norm != "batch"
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=plain)
        self.bn1 = _normalisation(channels, norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=plain)
        self.bn2 = _normalisation(channels, norm)
        self.gate: nn.Parameter | None = nn.Parameter(torch.zeros(())) if plain else None
        self.se: nn.Module | None = None
        if se_ratio:
            hidden = max(channels // se_ratio, 4)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden),
                                    nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = out * self.se(out)[:, :, None, None]
        if self.gate is not None:
            out = out * self.gate
        return F.relu(out + x, inplace=True)


class PolicyValueNet(nn.Module):
    """Residual policy/value network sized by ``ModelConfig``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels, norm = config.channels, config.norm
        plain = norm != "batch"
        self.stem = nn.Sequential(nn.Conv2d(NUM_PLANES, channels, 3, padding=1, bias=plain),
                                  _normalisation(channels, norm), nn.ReLU(inplace=True))
        self.tower = nn.Sequential(*(ResidualBlock(channels, config.se_ratio, norm)
                                     for _ in range(config.blocks)))
        # dlshogi's policy head: a 1x1 convolution to the 27 move planes plus a bias per
        # (plane, square), since a convolution alone cannot tell squares apart.
        self.policy_head = nn.Conv2d(channels, NUM_MOVE_PLANES, 1, bias=False)
        self.policy_bias = nn.Parameter(torch.zeros(NUM_ACTIONS))
        self.value_head = nn.Sequential(
            nn.Conv2d(channels, 2, 1, bias=plain), _normalisation(2, norm), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(2 * 81, config.value_hidden), nn.ReLU(inplace=True),
            nn.Linear(config.value_hidden, 1), nn.Tanh())
        # model.prior_head: the search's prior, the same shape as the policy head, trained
        # on engine moves only (the policy head learns self-play's signal)
        self.prior_head: nn.Conv2d | None = None
        self.prior_bias: nn.Parameter | None = None
        if config.prior_head:
            self.prior_head = nn.Conv2d(channels, NUM_MOVE_PLANES, 1, bias=False)
            self.prior_bias = nn.Parameter(torch.zeros(NUM_ACTIONS))
            self.register_load_state_dict_pre_hook(_prior_from_policy)  # type: ignore[no-untyped-call]

    def _features(self, observations: torch.Tensor) -> torch.Tensor:
        # channels-last convolutions are about 25% faster on CPU (measured) and suit
        # tensor cores; build_model puts the weights in that layout too.
        features: torch.Tensor = self.tower(
            self.stem(observations.contiguous(memory_format=torch.channels_last)))
        return features

    def forward(self, observations: torch.Tensor) -> PolicyValue:
        """The policy head's logits and the value: how the network plays raw and learns."""
        features = self._features(observations)
        return PolicyValue(self._policy(features), self._value(features))

    def heads(self, observations: torch.Tensor) -> Heads:
        """Every head's output from one pass (the prior ``None`` without a prior head)."""
        features = self._features(observations)
        prior = self._prior(features) if self.prior_head is not None else None
        return Heads(self._policy(features), prior, self._value(features))

    def search_outputs(self, observations: torch.Tensor) -> PolicyValue:
        """What a search evaluates a position by: the prior head's logits where the network
        has one (the policy head's otherwise) and the value."""
        if self.prior_head is None:
            return self.forward(observations)
        features = self._features(observations)
        return PolicyValue(self._prior(features), self._value(features))

    def _policy(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.policy_head(features).flatten(1) + self.policy_bias
        return logits

    def _prior(self, features: torch.Tensor) -> torch.Tensor:
        assert self.prior_head is not None and self.prior_bias is not None
        logits: torch.Tensor = self.prior_head(features).flatten(1) + self.prior_bias
        return logits

    def _value(self, features: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.value_head(features).squeeze(1)
        return value


def _prior_from_policy(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                       *_: Any) -> None:
    """Load a network saved without a prior head into one with it: the prior head starts
    as a copy of the saved policy head (``state_dict`` is load_state_dict's own copy)."""
    for head, source in (("prior_head.weight", "policy_head.weight"), ("prior_bias", "policy_bias")):
        if prefix + head not in state_dict and prefix + source in state_dict:
            state_dict[prefix + head] = state_dict[prefix + source].clone()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (``None``: plain float32).

    ``auto`` is float16 on CUDA and bfloat16 on a CPU with native bf16 arithmetic
    (AVX512-BF16/AMX: the 6x64 network trains 1.7x faster there, measured); float16
    is for CUDA only.

    :raises ValueError: for an unknown precision or float16 on a CPU.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "float16" and device.type == "cuda":
        return torch.float16
    raise ValueError(f"precision {precision!r} is not available on {device.type}; "
                     "use auto, float32 or bfloat16")


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor on ``device``: shared memory on CPU; on CUDA copied through
    pinned (page-locked) memory without blocking, so the copy overlaps host work."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """Mixed-precision context for the network's forward pass (no-op for float32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_model(config: ModelConfig) -> PolicyValueNet:
    """A freshly initialised network, weights in channels-last layout."""
    model: PolicyValueNet = PolicyValueNet(config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def masked_logits(logits: torch.Tensor, legal_masks: torch.Tensor) -> torch.Tensor:
    """Logits with illegal actions at -inf, so softmax gives them probability exactly 0.

    :raises ValueError: if a row has no legal action (it would have no distribution).
    """
    if legal_masks.shape != logits.shape or legal_masks.shape[-1] != NUM_ACTIONS:
        raise ValueError(f"mask shape {tuple(legal_masks.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    if not bool(legal_masks.any(dim=-1).all()):
        raise ValueError("a position has no legal action; finished games must not be encoded")
    return logits.masked_fill(~legal_masks, float("-inf"))


def log_probs_and_entropy(masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax of masked logits and the entropy of each row (illegal actions add 0)."""
    log_probs = torch.log_softmax(masked.float(), dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(dim=-1)
    return log_probs, entropy


def supervised_losses(logits: torch.Tensor, values: torch.Tensor, batch: dict[str, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy on the recorded move (over the legal moves), the value
    loss ``0.5 (v - result)^2`` where the result is known (0 elsewhere), whether the
    top move is the recorded one, and the known mask as float."""
    masked = masked_logits(logits.float(), batch["legal"])
    log_probs = torch.log_softmax(masked, dim=-1)
    policy = -log_probs.gather(1, batch["actions"][:, None]).squeeze(1)
    known = batch["known"].float()
    value = 0.5 * (values.float() - batch["results"]) ** 2 * known
    hits = (masked.argmax(dim=-1) == batch["actions"]).float()
    return policy, value, hits, known


def supervised_tensors(decoded: DecodedBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """A decoded batch of recorded positions as the tensors ``supervised_losses`` takes."""
    return {"observations": to_device(decoded.observations, device),
            "legal": to_device(decoded.legal_masks, device),
            "actions": to_device(decoded.actions, device),
            "results": to_device(decoded.results, device),
            "known": to_device(decoded.result_known, device)}


def choose_actions(masked: torch.Tensor, temperature: float,
                   uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one way Keisei picks moves from a policy (self-play, evaluation, ``keisei-usi``):
    one legal action per row of masked logits, and its log-probability.

    ``temperature`` 0 takes the most probable action (and its log-probability under the
    untempered policy). Otherwise the action is sampled from the policy at
    ``temperature`` by inverse CDF with ``uniforms[i]`` in [0, 1) for row i (drawn by the
    caller from its own generator, so each caller keeps its own reproducible stream): a
    search in the cumulative probabilities (``right=True`` lands only on actions with
    non-zero probability), about 12 times cheaper than ``torch.multinomial`` over 2187
    actions on CPU. The log-probability is then that of the tempered distribution
    actually sampled, which is what the PPO ratio needs.
    """
    if temperature == 0:
        actions = masked.argmax(dim=-1)
        return actions, torch.log_softmax(masked.float(), dim=-1).gather(1, actions[:, None]).squeeze(1)
    if uniforms is None:
        raise ValueError("choose_actions: sampling at a temperature above 0 needs uniforms")
    scaled = masked.float() if temperature == 1.0 else masked.float() / temperature
    probs = torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(dim=-1)
    uniform = uniforms.reshape(-1, 1).to(cdf.device, cdf.dtype) * cdf[:, -1:]
    actions = torch.searchsorted(cdf, uniform, right=True).squeeze(1)
    overflow = actions >= probs.shape[-1]  # u * total rounded up to total: take the last legal
    if bool(overflow.any()):
        last_legal = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
        actions = torch.where(overflow, last_legal, actions)
    return actions, probs.gather(1, actions[:, None]).squeeze(1).log()
