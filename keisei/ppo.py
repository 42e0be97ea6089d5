"""PPO mathematics as pure functions, named as in the paper and CleanRL's ``ppo.py``.

Credit in a two-player zero-sum game: each ply belongs to the player who made it. At
the end the winner's plies earn +1, the loser's -1, a draw ``draw_reward`` (0 unless
``train.draw_penalty`` is set), and GAE runs over each
player's own sequence of plies: the value that follows a ply is the value at that
player's *next* turn, not the opponent's (whose value is from the other side's view).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def compute_gae(rewards: np.ndarray, values: np.ndarray, gamma: float,
                gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns of one episode that ends after its last step.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` (``V`` after the last step is 0) and
    ``A_t = delta_t + gamma * lambda * A_{t+1}``; ``returns = advantages + values``.
    """
    steps = len(rewards)
    advantages = np.zeros(steps, dtype=np.float32)
    last_advantage = 0.0
    for t in range(steps - 1, -1, -1):
        next_value = values[t + 1] if t + 1 < steps else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last_advantage = delta + gamma * gae_lambda * last_advantage
        advantages[t] = last_advantage
    return advantages, advantages + values.astype(np.float32)


def game_advantages(players: np.ndarray, values: np.ndarray, winner: int | None, gamma: float,
                    gae_lambda: float, draw_reward: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-player GAE over one finished game.

    ``players[t]`` is the mover of ply t (0 black, 1 white), ``values[t]`` the value the
    network gave at ply t from the mover's view, ``winner`` 0, 1 or ``None`` for a draw.
    Each player's last ply earns its final reward (+1, -1, or ``draw_reward`` for both
    players at a draw: below 0, a draw is worse than 0 for either side, so the value learns
    which positions head for one and the advantages steer away from them).
    """
    advantages = np.zeros(len(players), dtype=np.float32)
    returns = np.zeros(len(players), dtype=np.float32)
    for player in (0, 1):
        plies = np.flatnonzero(players == player)
        if len(plies) == 0:
            continue
        rewards = np.zeros(len(plies), dtype=np.float32)
        if winner is not None:
            rewards[-1] = 1.0 if winner == player else -1.0
        else:
            rewards[-1] = draw_reward
        advantages[plies], returns[plies] = compute_gae(rewards, values[plies], gamma, gae_lambda)
    return advantages, returns


def _potential_after(potentials: np.ndarray, last_ply: int) -> float:
    """A player's potential after its last ply ``last_ply`` (potentials are zero-sum, each
    from its mover's view): the opponent's at its reply, negated, when there is a reply;
    else the player's own at its last ply (the game's last move is credited with no
    change)."""
    if last_ply + 1 < len(potentials):
        return -float(potentials[last_ply + 1])
    return float(potentials[last_ply])


def shaping_advantages(players: np.ndarray, potentials: np.ndarray, gamma: float,
                       gae_lambda: float) -> np.ndarray:
    """The part of each ply's advantage that potential-based shaping adds, per unit weight.

    Shaping (Ng, Harada & Russell 1999) adds ``F = gamma * Phi(s') - Phi(s)`` to the reward
    of each ply, ``s'`` being the mover's next position. ``potentials[t]`` is ``Phi`` of ply
    t's position from its mover's view, and the potential after a player's last ply is the
    one it left on the board (see ``_potential_after``), not 0: with 0, a mating move would pay
    back the whole material lead and the mated side would be refunded its deficit. So the
    shaping terms of a game sum to the change of ``Phi`` over it, which keeps the optimal
    policy only once the shaping weight has been annealed to 0. GAE is linear in the
    rewards, so with ``gae_lambda`` equal to the game's, ``game_advantages(...) + weight *
    shaping_advantages(...)`` is exactly GAE of the shaped rewards for any weight; with a
    smaller ``gae_lambda`` (the default 0) the material is credited over a shorter horizon
    than the result. The learner stores this part apart and weighs it when it trains.
    """
    following = _next_own_potentials(players, potentials)
    advantages = np.zeros(len(players), dtype=np.float32)
    for player in (0, 1):
        plies = np.flatnonzero(players == player)
        if len(plies) == 0:
            continue
        rewards = gamma * following[plies] - potentials[plies].astype(np.float32)
        advantages[plies], _ = compute_gae(rewards, np.zeros(len(plies), dtype=np.float32), gamma,
                                           gae_lambda)
    return advantages


def _next_own_potentials(players: np.ndarray, potentials: np.ndarray) -> np.ndarray:
    """Per ply, its mover's potential at the mover's next ply (``_potential_after`` for
    its last)."""
    following = np.zeros(len(players), dtype=np.float32)
    for player in (0, 1):
        plies = np.flatnonzero(players == player)
        if len(plies) == 0:
            continue
        own = potentials[plies].astype(np.float32)
        following[plies] = np.append(own[1:], np.float32(_potential_after(potentials,
                                                                          int(plies[-1]))))
    return following


def material_value_targets(players: np.ndarray, potentials: np.ndarray,
                           scale: float) -> np.ndarray:
    """Per ply, ``tanh(Phi / scale)`` of the material its mover has at its next turn: after
    its move and the reply, so a piece left hanging or won counts (``potentials`` as in
    ``shaping_advantages``; a player's last ply but one sees the reply's position). The
    game's last ply is NaN: the position after it is not recorded, and its result says more.

    A value target for the first hours, when results alone are too few to teach that
    material wins games: the learner mixes it into the returns (``train.value_material_mix``).
    """
    targets = np.tanh(_next_own_potentials(players, potentials) / np.float32(scale))
    if len(players):
        targets[-1] = np.nan
    return targets


def linear_decay(scale: float, anneal_steps: int, step: int) -> float:
    """``scale`` at training ``step``, falling linearly to 0 at ``anneal_steps``
    (``anneal_steps`` 0: constant)."""
    if anneal_steps <= 0:
        return scale
    return scale * max(0.0, 1.0 - step / anneal_steps)


shaping_weight = linear_decay
"""The reward-shaping coefficient at a step (``train.shaping_scale``, ``shaping_anneal_steps``)."""
init_kl_coef_at = linear_decay
"""The KL penalty's weight at a step (``train.init_kl_coef``, ``init_kl_steps``)."""


def kl_from_reference(log_probs: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(reference || policy)`` per row: ``sum_a p_ref(a) (log p_ref(a) - log p(a))``.

    Both are log-softmaxes of masked logits over the same legal moves (illegal ones are
    ``-inf`` in both and add nothing). The direction keeps the policy's mass on every
    move the reference plays (what pre-training taught), and its gradient is that of a
    cross-entropy toward the reference: ``-sum_a p_ref(a) d log p(a)``.
    """
    reference_probs = reference_log_probs.exp()
    terms = reference_probs * (reference_log_probs - log_probs)
    return torch.where(reference_probs > 0, terms, torch.zeros_like(terms)).sum(dim=-1)


def search_cross_entropy(log_probs: torch.Tensor, target_actions: torch.Tensor,
                         target_probs: torch.Tensor) -> torch.Tensor:
    """Per row, the cross-entropy ``-sum_a p(a) log pi(a)`` of the policy toward a search
    target (0 for a row without one).

    ``log_probs`` ``(B, NUM_ACTIONS)`` are the policy's log-softmax over legal moves;
    ``target_actions`` ``(B, W)`` the target's actions (-1 pads) and ``target_probs``
    ``(B, W)`` their probabilities (0 pads). Padding adds nothing and passes no gradient,
    even where the padded index is an illegal move (log-probability ``-inf``). Grill et al.
    2020: with the search's improved policy as ``p``, descending this is itself a
    regularised policy-improvement step.
    """
    present = target_probs > 0
    picked = log_probs.gather(1, target_actions.long().clamp(min=0))
    picked = picked.masked_fill(~present, 0.0)
    return -(target_probs * picked).sum(dim=-1)


@dataclass(frozen=True)
class PPOLosses:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


MAX_LOG_RATIO = 20.0
"""Bound on |log pi_new - log pi_behaviour| in the PPO ratio (see ``ppo_losses``)."""


def ppo_losses(new_log_probs: torch.Tensor, old_log_probs: torch.Tensor,
               advantages: torch.Tensor, new_values: torch.Tensor, old_values: torch.Tensor,
               returns: torch.Tensor, entropy: torch.Tensor, *, clip_coef: float,
               clip_value_loss: bool, vf_coef: float, ent_coef: float,
               normalize_advantages: bool, dual_clip: float = 0.0,
               policy_mask: torch.Tensor | None = None,
               proximal_log_probs: torch.Tensor | None = None,
               behaviour_weight_cap: float = 1.0) -> PPOLosses:
    """The clipped PPO objective for one minibatch (all arguments shaped ``(B,)``).

    The log-ratio is bounded to ``±MAX_LOG_RATIO`` before ``exp``: a behaviour
    log-probability far below what the policy gives (a hostile actor's, or a move an
    honest one sampled at odds of e^-100) would otherwise overflow the ratio to inf
    and the loss with it. Honest updates never come near the bound (e^20), and a
    bounded sample passes no gradient (the clamp's is zero).

    ``dual_clip`` (``c`` > 1, Ye et al. 2020; 0: off) also bounds the objective of a
    negative advantage from below at ``c * A``, so a ratio far above 1 on a bad move
    cannot make one sample's loss unbounded. ``policy_mask`` (bool) names the rows whose
    move was the policy's choice: only those enter the policy-gradient term, the
    approximate KL and the clip fraction (a forced move's behaviour log-probability is
    not the probability it was played with). The value and entropy terms use every row.

    **Decoupled clipping** (Hilton et al. 2021, "Batch size-invariance for policy
    optimization"), when ``proximal_log_probs`` are given (the policy's log-probabilities
    before this update): the ratio that is clipped is ``pi / pi_proximal``, so the clip
    bounds the update's own step however stale the behaviour policy (``old_log_probs``)
    was, and each row's term is weighted by ``pi_proximal / pi_behaviour`` truncated at
    ``behaviour_weight_cap`` (V-trace's rho-bar; 1 by default), which corrects for the
    policy that played. Without them the ratio is to the behaviour policy (plain PPO).
    The approximate KL and clip fraction are of the clipped ratio.
    """
    reference = old_log_probs if proximal_log_probs is None else proximal_log_probs
    logratio = (new_log_probs - reference).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = logratio.exp()
    weights = (torch.ones_like(ratio) if policy_mask is None
               else policy_mask.to(ratio.dtype))
    chosen = weights.sum().clamp(min=1.0)
    behaviour_weights = torch.ones_like(ratio)
    if proximal_log_probs is not None:
        behaviour_weights = (proximal_log_probs - old_log_probs).clamp(
            -MAX_LOG_RATIO, MAX_LOG_RATIO).exp().clamp(max=behaviour_weight_cap).detach()
    with torch.no_grad():
        # http://joschu.net/blog/kl-approx.html
        approx_kl = (((ratio - 1) - logratio) * weights).sum() / chosen
        clipfrac = (((ratio - 1.0).abs() > clip_coef).float() * weights).sum() / chosen
    mb_advantages = advantages
    if normalize_advantages and len(advantages) > 1:
        mb_advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss1 = -mb_advantages * ratio
    pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    pg_loss = torch.max(pg_loss1, pg_loss2)
    if dual_clip > 0:
        pg_loss = torch.where(mb_advantages < 0, torch.min(pg_loss, -dual_clip * mb_advantages),
                              pg_loss)
    policy_loss = (pg_loss * behaviour_weights * weights).sum() / chosen
    if clip_value_loss:
        v_loss_unclipped = (new_values - returns) ** 2
        v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        value_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
    else:
        value_loss = 0.5 * ((new_values - returns) ** 2).mean()
    entropy_mean = entropy.mean()
    loss = policy_loss - ent_coef * entropy_mean + vf_coef * value_loss
    return PPOLosses(loss, policy_loss, value_loss, entropy_mean, approx_kl, clipfrac)


def explained_variance(predictions: np.ndarray, targets: np.ndarray) -> float:
    """1 - Var[targets - predictions] / Var[targets]; NaN when the targets do not vary."""
    return explained_variance_of(*variance_moments(predictions, targets))


def variance_moments(predictions: np.ndarray, targets: np.ndarray) -> list[float]:
    """The means of targets, targets², errors and errors² (errors = targets - predictions),
    in float64: what ``explained_variance_of`` needs, and what several processes' shares
    of the same data can average."""
    targets64 = targets.astype(np.float64)
    errors = targets64 - predictions.astype(np.float64)
    return [float(targets64.mean()), float((targets64 ** 2).mean()), float(errors.mean()),
            float((errors ** 2).mean())]


def explained_variance_of(target_mean: float, target_square_mean: float, error_mean: float,
                          error_square_mean: float) -> float:
    """``explained_variance`` from ``variance_moments`` (NaN when the targets do not vary)."""
    spread = target_square_mean - target_mean * target_mean
    if spread <= 0:
        return float("nan")
    return 1.0 - (error_square_mean - error_mean * error_mean) / spread


def learning_rate_at(schedule: str, initial: float, progress: float) -> float:
    """The learning rate after ``progress`` (0 to 1) of the run under ``schedule``."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return initial
    if schedule == "linear":
        return initial * (1.0 - progress)
    if schedule == "cosine":
        return initial * 0.5 * (1.0 + float(np.cos(np.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}: use constant, linear or cosine")
