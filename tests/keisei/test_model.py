"""The network's shapes and ranges, and masked sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keisei.config import ModelConfig, saved_model_settings
from keisei.encoding import NUM_ACTIONS, NUM_PLANES, encode_observation, legal_action_mask
from keisei.model import (
    PRESETS,
    build_model,
    choose_actions,
    count_parameters,
    log_probs_and_entropy,
    masked_logits,
)
from keisei.search import network_evaluator
from keisei.shogi import Game


@pytest.mark.parametrize("se_ratio", [0, 4])
def test_outputs_have_the_action_and_value_shapes(se_ratio: int) -> None:
    model = build_model(ModelConfig(blocks=1, channels=16, se_ratio=se_ratio, value_hidden=8)).eval()
    logits, value = model(torch.randn(5, NUM_PLANES, 9, 9) * 3)
    assert logits.shape == (5, NUM_ACTIONS) and value.shape == (5,)
    assert bool(((value >= -1) & (value <= 1)).all())


def test_a_network_without_batch_norm_acts_as_it_trains_and_starts_as_the_identity_tower() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(blocks=2, channels=16, value_hidden=8, norm="none"))
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())
    observations = torch.randn(6, NUM_PLANES, 9, 9)
    stem = model.stem(observations)
    assert torch.equal(model.tower(stem), stem)  # every gate starts at 0
    with torch.no_grad():
        for block in model.tower:
            block.gate.fill_(0.5)
        trained = model.train()(observations)
        acting = model.eval()(observations)
        assert not torch.equal(model.tower(stem), stem)
    assert torch.equal(trained.logits, acting.logits) and torch.equal(trained.value, acting.value)
    # with batch norm the two differ: training mode uses the batch's statistics
    batch_norm = build_model(ModelConfig(blocks=2, channels=16, value_hidden=8))
    with torch.no_grad():
        assert not torch.allclose(batch_norm.train()(observations).logits,
                                  batch_norm.eval()(observations).logits)


def test_saved_model_settings_fill_in_keys_a_checkpoint_predates() -> None:
    saved = {"blocks": 2, "channels": 16, "se_ratio": 0, "value_hidden": 8}  # before model.norm
    assert saved_model_settings(saved) == {**saved, "norm": "batch", "prior_head": False}
    assert saved_model_settings({**saved, "norm": "none"})["norm"] == "none"


def test_a_prior_head_is_what_a_search_sees_and_starts_as_a_saved_policy_head() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(blocks=1, channels=16, value_hidden=8)).eval()
    split = build_model(ModelConfig(blocks=1, channels=16, value_hidden=8, prior_head=True)).eval()
    split.load_state_dict(plain.state_dict())  # saved without a prior head: a copy of the policy's
    observations = torch.randn(4, NUM_PLANES, 9, 9)
    with torch.no_grad():
        expected = plain(observations)
        assert split.prior_bias is not None
        split.prior_bias.add_(torch.arange(NUM_ACTIONS, dtype=torch.float32) / NUM_ACTIONS)
        heads = split.heads(observations)
        played = split(observations)
    assert torch.allclose(heads.logits, expected.logits) and torch.allclose(played.logits, expected.logits)
    assert heads.prior is not None
    assert torch.allclose(heads.prior, expected.logits + torch.arange(NUM_ACTIONS) / NUM_ACTIONS)
    logits, values = network_evaluator(split)(observations.numpy())
    assert np.allclose(logits, heads.prior.numpy(), atol=1e-6)
    assert np.allclose(values, expected.value.numpy(), atol=1e-6)
    assert plain.heads(observations).prior is None
    with pytest.raises(RuntimeError, match="prior_head.weight"):
        plain.load_state_dict(split.state_dict())  # a prior head has nowhere to go


def test_presets_grow_in_size() -> None:
    sizes = [count_parameters(build_model(PRESETS[name])) for name in ("tiny", "small", "medium")]
    assert sizes == sorted(sizes) and sizes[0] < 200_000


def test_masked_sampling_never_selects_an_illegal_action() -> None:
    game = Game("4k4/9/9/9/9/9/9/9/4K4 b - 1")  # only king moves: 5 legal
    mask = torch.from_numpy(legal_action_mask(game.board)).expand(4096, -1)
    logits = torch.randn(4096, NUM_ACTIONS) * 5
    logits[:, ~mask[0]] += 100.0  # illegal actions would dominate if not masked
    masked = masked_logits(logits, mask)
    generator = torch.Generator().manual_seed(0)
    for temperature in (0.0, 0.1, 1.0, 5.0):
        actions, log_probs = choose_actions(masked, temperature, torch.rand(4096, generator=generator))
        assert bool(mask[torch.arange(4096), actions].all())
        assert bool((log_probs <= 0).all()) and bool(torch.isfinite(log_probs).all())
    log_probs, entropy = log_probs_and_entropy(masked)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(4096))
    assert bool((log_probs.exp()[:, ~mask[0]] == 0).all())
    assert bool(torch.isfinite(entropy).all()) and float(entropy.max()) <= float(torch.log(torch.tensor(5.0))) + 1e-5


def test_sampling_follows_the_policy() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1] + [1e-9] * (NUM_ACTIONS - 3)]))
    mask = torch.zeros(1, NUM_ACTIONS, dtype=torch.bool)
    mask[0, :3] = True
    masked = masked_logits(logits.expand(20_000, -1), mask.expand(20_000, -1))
    actions, _ = choose_actions(masked, 1.0, torch.rand(20_000, generator=torch.Generator().manual_seed(1)))
    frequencies = torch.bincount(actions, minlength=3).float() / 20_000
    assert frequencies[:3].tolist() == pytest.approx([0.7, 0.2, 0.1], abs=0.02)


def test_temperature_zero_takes_the_most_probable_legal_action() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.5, 9.0] + [0.0] * (NUM_ACTIONS - 4)])
    mask = torch.zeros(1, NUM_ACTIONS, dtype=torch.bool)
    mask[0, :3] = True  # action 3 is illegal
    actions, log_probs = choose_actions(masked_logits(logits, mask), 0.0)
    assert actions.tolist() == [1]
    assert float(log_probs[0]) == pytest.approx(2.0 - float(torch.logsumexp(logits[0, :3], 0)))
    with pytest.raises(ValueError, match="uniforms"):
        choose_actions(masked_logits(logits, mask), 1.0)


def test_mask_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="no legal action"):
        masked_logits(torch.zeros(2, NUM_ACTIONS), torch.zeros(2, NUM_ACTIONS, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        masked_logits(torch.zeros(2, NUM_ACTIONS), torch.ones(2, 10, dtype=torch.bool))


def test_model_runs_on_a_real_position() -> None:
    model = build_model(PRESETS["tiny"]).eval()
    observation = torch.from_numpy(encode_observation(Game().board))[None]
    with torch.inference_mode():
        logits, value = model(observation)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()
