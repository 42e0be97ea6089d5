"""The PPO maths against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keisei.ppo import (
    compute_gae,
    explained_variance,
    explained_variance_of,
    game_advantages,
    init_kl_coef_at,
    kl_from_reference,
    learning_rate_at,
    material_value_targets,
    ppo_losses,
    search_cross_entropy,
    shaping_advantages,
    shaping_weight,
    variance_moments,
)


def test_gae_matches_a_hand_computed_example() -> None:
    # gamma 0.9, lambda 0.8: deltas 0.9*0.4-0.5=-0.14, 0.9*0.8-0.4=0.32, 1-0.8=0.2
    advantages, returns = compute_gae(np.array([0, 0, 1.0]), np.array([0.5, 0.4, 0.8]), 0.9, 0.8)
    assert advantages == pytest.approx([-0.14 + 0.72 * 0.464, 0.32 + 0.72 * 0.2, 0.2])
    assert returns == pytest.approx([0.69408, 0.864, 1.0])


def test_gae_matches_a_slow_reference_on_random_episodes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        steps = int(rng.integers(1, 30))
        rewards, values = rng.normal(size=steps), rng.normal(size=steps)
        gamma, lam = float(rng.uniform(0.5, 1)), float(rng.uniform(0, 1))
        advantages, _ = compute_gae(rewards, values, gamma, lam)
        next_values = np.append(values[1:], 0.0)
        deltas = rewards + gamma * next_values - values
        reference = [sum((gamma * lam) ** k * deltas[t + k] for k in range(steps - t))
                     for t in range(steps)]
        assert advantages == pytest.approx(reference, rel=1e-4, abs=1e-5)


def test_each_player_is_credited_over_its_own_plies() -> None:
    players = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    advantages, returns = game_advantages(players, values, winner=0, gamma=1.0, gae_lambda=1.0)
    # Black (plies 0, 2, 4) won: return +1 on each; White (plies 1, 3) lost: -1.
    assert returns == pytest.approx([1, -1, 1, -1, 1])
    assert advantages == pytest.approx([0.9, -1.2, 0.7, -1.4, 0.5])
    _, draw_returns = game_advantages(players, values, winner=None, gamma=1.0, gae_lambda=1.0)
    assert draw_returns == pytest.approx([0, 0, 0, 0, 0], abs=1e-6)
    # lambda 0: one-step targets use the same player's next value, not the opponent's
    _, td_returns = game_advantages(players, values, winner=1, gamma=1.0, gae_lambda=0.0)
    assert td_returns == pytest.approx([0.3, 0.4, 0.5, 1.0, -1.0])


def test_a_draw_reward_ends_both_players_plies() -> None:
    players = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    advantages, returns = game_advantages(players, values, winner=None, gamma=1.0,
                                          gae_lambda=1.0, draw_reward=-0.5)
    assert returns == pytest.approx([-0.5] * 5)
    assert advantages == pytest.approx([-0.6, -0.7, -0.8, -0.9, -1.0])
    # lambda 0, gamma 0.5: each player's last ply gets the draw reward, the others half the
    # same player's next value
    _, td_returns = game_advantages(players, values, winner=None, gamma=0.5, gae_lambda=0.0,
                                    draw_reward=-0.5)
    assert td_returns == pytest.approx([0.15, 0.2, 0.25, -0.5, -0.5])
    # a decided game ignores it
    _, decided = game_advantages(players, values, winner=0, gamma=1.0, gae_lambda=1.0,
                                 draw_reward=-0.5)
    assert decided == pytest.approx([1, -1, 1, -1, 1])


def test_shaping_credits_each_move_with_the_material_change_over_it_and_the_reply() -> None:
    players = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    # material from each mover's view: Black takes a pawn at ply 0, White a silver at ply 1,
    # Black a gold at ply 2 (balance +1, -4, +2 for Black), then quiet moves
    potentials = np.array([0.0, -1.0, -4.0, -2.0, 2.0], dtype=np.float32)
    one_step = shaping_advantages(players, potentials, gamma=1.0, gae_lambda=0.0)
    # Black: 0 -> -4 -> 2 -> (own final) 2; White: -1 -> -2 -> (Black's final, negated) -2
    assert one_step == pytest.approx([-4.0, -1.0, 6.0, 0.0, 0.0])
    whole = shaping_advantages(players, potentials, gamma=1.0, gae_lambda=1.0)
    # lambda 1 with zero values: the change of the potential from the ply to the game's end
    assert whole == pytest.approx([2.0, -1.0, 6.0, 0.0, 0.0])
    discounted = shaping_advantages(players, potentials, gamma=0.5, gae_lambda=0.0)
    assert discounted == pytest.approx([-2.0, 0.0, 5.0, 1.0, -1.0])


def test_material_value_targets_read_the_movers_material_at_its_next_turn() -> None:
    players = np.array([0, 1, 0, 1, 0], dtype=np.uint8)
    potentials = np.array([0.0, -1.0, -4.0, -2.0, 2.0], dtype=np.float32)  # as above
    targets = material_value_targets(players, potentials, scale=2.0)
    # Black: ply 0 -> its next turn (ply 2) -4, ply 2 -> ply 4 +2, ply 4 the game's last;
    # White: ply 1 -> ply 3 -2, ply 3 (its last) -> Black's reply +2, negated: -2
    assert targets[:4] == pytest.approx(np.tanh(np.array([-4.0, -2.0, 2.0, -2.0]) / 2.0))
    assert np.isnan(targets[4])
    assert np.isnan(material_value_targets(players[:1], potentials[:1], scale=2.0)).all()


def test_shaping_weight_anneals_linearly_to_zero() -> None:
    assert shaping_weight(0.1, 0, 10**9) == 0.1
    assert shaping_weight(0.1, 1000, 0) == pytest.approx(0.1)
    assert shaping_weight(0.1, 1000, 250) == pytest.approx(0.075)
    assert shaping_weight(0.1, 1000, 1000) == shaping_weight(0.1, 1000, 5000) == 0.0


def losses_at(ratio: float, advantage: float):
    new = torch.tensor([math.log(ratio)], requires_grad=True)
    result = ppo_losses(new, torch.zeros(1), torch.tensor([advantage]), torch.zeros(1),
                        torch.zeros(1), torch.zeros(1), torch.zeros(1), clip_coef=0.2,
                        clip_value_loss=False, vf_coef=0.0, ent_coef=0.0,
                        normalize_advantages=False)
    result.loss.backward()
    return result, float(new.grad[0])


@pytest.mark.parametrize(("ratio", "advantage", "policy_loss", "has_gradient"), [
    (1.5, 1.0, -1.2, False),   # above 1 + clip with a good action: clipped, no push further
    (0.5, -1.0, 0.8, False),   # below 1 - clip with a bad action: clipped
    (1.5, -1.0, 1.5, True),    # the pessimistic (unclipped) side keeps its gradient
    (0.5, 1.0, -0.5, True),
    (1.1, 1.0, -1.1, True),    # inside the clip range
])
def test_clipped_surrogate_at_the_ratio_edges(ratio: float, advantage: float,
                                              policy_loss: float, has_gradient: bool) -> None:
    result, gradient = losses_at(ratio, advantage)
    assert float(result.policy_loss.detach()) == pytest.approx(policy_loss)
    assert (gradient != 0) == has_gradient
    assert float(result.clipfrac) == (1.0 if abs(ratio - 1) > 0.2 else 0.0)


def test_value_clipping_and_entropy_terms() -> None:
    new_values, old_values, returns = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])
    common = dict(clip_coef=0.2, vf_coef=1.0, ent_coef=0.5, normalize_advantages=False)
    zeros = torch.zeros(1)
    unclipped = ppo_losses(zeros, zeros, zeros, new_values, old_values, returns, torch.tensor([2.0]),
                           clip_value_loss=False, **common)
    clipped = ppo_losses(zeros, zeros, zeros, new_values, old_values, returns, torch.tensor([2.0]),
                         clip_value_loss=True, **common)
    assert float(unclipped.value_loss) == 0.0
    assert float(clipped.value_loss) == pytest.approx(0.5 * 0.8 ** 2)  # clipped to 0.2 from 0
    assert float(unclipped.loss) == pytest.approx(-0.5 * 2.0)


def test_learning_rate_schedules_and_explained_variance() -> None:
    assert learning_rate_at("constant", 1.0, 0.7) == 1.0
    assert learning_rate_at("linear", 2.0, 0.25) == pytest.approx(1.5)
    assert learning_rate_at("cosine", 1.0, 0.5) == pytest.approx(0.5)
    assert learning_rate_at("cosine", 1.0, 1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_at("step", 1.0, 0.5)
    targets = np.array([1.0, 2.0, 3.0])
    assert explained_variance(targets, targets) == 1.0
    assert explained_variance(np.zeros(3), targets) == pytest.approx(1 - np.var(targets) / np.var(targets))
    assert math.isnan(explained_variance(np.zeros(3), np.ones(3)))
    # by hand: targets 1, 2, 3 (variance 2/3), predictions 1, 1, 4 (errors 0, 1, -1:
    # variance 2/3) explain nothing
    assert explained_variance(np.array([1.0, 1.0, 4.0]), targets) == pytest.approx(0.0)
    # two equal shares' averaged moments give the whole's explained variance
    predictions = np.array([0.5, 2.5, 2.0, 1.0])
    whole = np.array([1.0, 2.0, 3.0, 0.0])
    halves = [variance_moments(predictions[:2], whole[:2]), variance_moments(predictions[2:], whole[2:])]
    averaged = [(a + b) / 2 for a, b in zip(*halves, strict=True)]
    assert explained_variance_of(*averaged) == pytest.approx(
        1 - np.var(whole - predictions) / np.var(whole))


def test_kl_from_reference_matches_hand_computed_values() -> None:
    # Two positions over four actions; the last action is illegal in the first one.
    reference = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])
    policy = torch.tensor([[0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    kl = kl_from_reference(policy.log(), reference.log())
    first = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0) + 0.25 * math.log(0.25 / 0.5)
    second = sum(p * math.log(p / 0.25) for p in (0.1, 0.2, 0.3, 0.4))
    assert kl.tolist() == pytest.approx([first, second], rel=1e-5)
    assert first == pytest.approx(0.17328679513998632)
    same = kl_from_reference(reference.log(), reference.log())
    assert same.tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


def test_kl_gradient_pulls_toward_the_reference() -> None:
    logits = torch.zeros(1, 3, requires_grad=True)
    reference = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    kl_from_reference(torch.log_softmax(logits, dim=-1), reference).sum().backward()
    # d/dz KL(r || softmax(z)) = softmax(z) - r
    assert logits.grad is not None
    assert logits.grad[0].tolist() == pytest.approx([1 / 3 - 0.7, 1 / 3 - 0.2, 1 / 3 - 0.1])


def test_init_kl_coefficient_decays_linearly() -> None:
    assert init_kl_coef_at(0.5, 0, 10**9) == 0.5
    assert init_kl_coef_at(0.5, 1000, 0) == pytest.approx(0.5)
    assert init_kl_coef_at(0.5, 1000, 500) == pytest.approx(0.25)
    assert init_kl_coef_at(0.5, 1000, 1000) == 0.0
    assert init_kl_coef_at(0.5, 1000, 5000) == 0.0


def test_search_cross_entropy_matches_hand_values_and_ignores_padding() -> None:
    # row 0: legal moves 0, 1, 2 with policy (0.5, 0.25, 0.25); target 0.8 on 1, 0.2 on 2
    # row 1: no target (all padding); action 3 is illegal (-inf) and appears only as padding
    log_probs = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.7, 0.1, 0.1, 0.1]]))
    log_probs.requires_grad_(True)
    actions = torch.tensor([[1, 2, 3, -1], [-1, -1, -1, -1]])
    probs = torch.tensor([[0.8, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss = search_cross_entropy(log_probs, actions, probs)
    expected = -(0.8 * math.log(0.25) + 0.2 * math.log(0.25))
    assert loss.tolist() == pytest.approx([expected, 0.0])
    loss.sum().backward()
    assert log_probs.grad is not None and torch.isfinite(log_probs.grad).all()
    assert log_probs.grad.flatten().tolist() == pytest.approx([0.0, -0.8, -0.2, 0.0] + [0.0] * 4)


def test_a_masked_row_does_not_move_the_policy_loss_or_its_statistics() -> None:
    old = torch.zeros(3)
    advantages = torch.tensor([1.0, -1.0, 2.0])
    common = dict(clip_coef=0.2, clip_value_loss=False, vf_coef=0.0, ent_coef=0.0,
                  normalize_advantages=False)
    zeros = torch.zeros(3)
    mask = torch.tensor([True, True, False])
    for forced_log_ratio in (0.0, 3.0, -15.0):  # whatever the forced row's ratio
        new = torch.tensor([math.log(1.1), math.log(1.5), forced_log_ratio], requires_grad=True)
        result = ppo_losses(new, old, advantages, zeros, zeros, zeros, zeros, policy_mask=mask,
                            **common)
        # row 0: -1.1 (inside the clip); row 1: max(1.5, 1.2) = 1.5; the mean of the two
        assert float(result.policy_loss.detach()) == pytest.approx((-1.1 + 1.5) / 2)
        assert float(result.clipfrac) == pytest.approx(0.5)
        assert float(result.approx_kl) == pytest.approx(
            ((0.1 - math.log(1.1)) + (0.5 - math.log(1.5))) / 2, rel=1e-5)
        result.loss.backward()
        assert new.grad is not None and float(new.grad[2]) == 0.0


def test_dual_clip_bounds_a_negative_advantages_loss() -> None:
    common = dict(clip_coef=0.2, clip_value_loss=False, vf_coef=0.0, ent_coef=0.0,
                  normalize_advantages=False)
    zeros = torch.zeros(4)
    ratios = torch.tensor([5.0, 2.0, 5.0, 0.5])
    advantages = torch.tensor([-1.0, -1.0, 1.0, -1.0])
    plain = ppo_losses(ratios.log(), zeros, advantages, zeros, zeros, zeros, zeros, **common)
    dual = ppo_losses(ratios.log(), zeros, advantages, zeros, zeros, zeros, zeros, dual_clip=3.0,
                      **common)
    # per row without dual clip: 5, 2, -1.2 (clipped good move), 0.8 (clipped bad move);
    # dual clip at 3 bounds the first to 3 * 1 and leaves the others
    assert float(plain.policy_loss) == pytest.approx((5 + 2 - 1.2 + 0.8) / 4)
    assert float(dual.policy_loss) == pytest.approx((3 + 2 - 1.2 + 0.8) / 4)


def test_decoupled_clipping_clips_the_ratio_to_the_proximal_policy_and_weights_by_behaviour() -> None:
    common = dict(clip_coef=0.2, clip_value_loss=False, vf_coef=0.0, ent_coef=0.0,
                  normalize_advantages=False)
    zeros = torch.zeros(3)
    new = torch.tensor([0.55, 0.3, 0.5]).log()
    proximal = torch.tensor([0.5, 0.3, 0.25]).log()
    behaviour = torch.tensor([0.25, 0.6, 0.5]).log()  # stale: far from the proximal policy
    advantages = torch.tensor([1.0, 1.0, -1.0])
    result = ppo_losses(new, behaviour, advantages, zeros, zeros, zeros, zeros,
                        proximal_log_probs=proximal, behaviour_weight_cap=1.0, **common)
    # ratios to the proximal policy 1.1, 1.0, 2.0; behaviour weights min(2, 1) = 1, 0.5, 0.5
    # terms: -1.1 * 1 = -1.1; -1.0 * 0.5 = -0.5; max(2.0, 1.2) * 0.5 = 1.0
    assert float(result.policy_loss) == pytest.approx((-1.1 - 0.5 + 1.0) / 3, rel=1e-5)
    assert float(result.clipfrac) == pytest.approx(1 / 3)  # only the third is past 1 +- 0.2
    capped = ppo_losses(new, behaviour, advantages, zeros, zeros, zeros, zeros,
                        proximal_log_probs=proximal, behaviour_weight_cap=3.0, **common)
    assert float(capped.policy_loss) == pytest.approx((-2.2 - 0.5 + 1.0) / 3, rel=1e-5)
    plain = ppo_losses(new, behaviour, advantages, zeros, zeros, zeros, zeros, **common)
    # plain PPO: ratios 2.2, 0.5, 1.0 to the behaviour policy, the first two clipped
    assert float(plain.policy_loss) == pytest.approx((-1.2 - 0.5 + 1.0) / 3, rel=1e-5)
    assert float(plain.clipfrac) == pytest.approx(2 / 3)
