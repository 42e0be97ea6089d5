"""What each epoch reports, typed: the parts its owners fill in, and the one record that
reaches the dashboard, ``metrics.jsonl`` and TensorBoard.

``EpochReport.to_json()`` flattens the parts into the JSONL fields users' scripts read
(``policy_loss``, ``wire_steps_received``, ``elo`` ...); their names do not change. The
distributed parts (actors, supervision) are present only when actors are wired in, and
a rating's figures only in the epoch its results came in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, cast

REPORTED_ACTORS = 32
"""Actor rows in each metrics line (the most recently heard); the rest are only counted."""


class Mode(StrEnum):
    """Where the learner's games come from."""

    SEQUENTIAL = "sequential"  # the in-process collector
    DISTRIBUTED = "distributed"  # actors, over the wire


@dataclass(frozen=True)
class CollectReport:
    collect_seconds: float
    collected_steps: int  # by the in-process collector
    inference_seconds: float
    encode_seconds: float
    rules_seconds: float


@dataclass(frozen=True)
class UpdateReport:
    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    grad_norm: float
    ppo_passes: int
    learning_rate: float
    shaping_weight: float
    explained_variance: float
    update_seconds: float
    policy_lag_mean: float
    policy_lag_max: int
    init_kl: float = math.nan
    """Mean KL(initial policy || policy) of the trained positions, while an ``--init-from``
    run's penalty is on (null otherwise)."""
    init_kl_coef: float = 0.0
    """The KL penalty's weight this update (``train.init_kl_coef``, decaying)."""
    search_loss: float = math.nan
    """Mean cross-entropy of the policy toward the epoch's search targets
    (``selfplay.search_share``; null when it has none)."""
    search_targets: int = 0
    """Steps of the epoch that carried a search target."""
    exact_kl: float = math.nan
    """Mean exact KL(pre-update policy || policy) over each trained position's legal moves,
    the pre-update policy computed once per epoch (``approx_kl`` is its sampled estimate)."""
    value_anchor: float = math.nan
    """Mean squared difference between the value and the anchor's value on the trained
    positions, while ``train.value_anchor_coef`` is on (null otherwise)."""
    supervised_loss: float = math.nan
    """Mean cross-entropy of the policy on the recorded moves of ``train.supervised_data``'s
    positions trained beside self-play's (null while it is off)."""
    supervised_value_loss: float = math.nan
    """Mean ``0.5 (value - result)^2`` on those positions (null while it is off)."""
    supervised_accuracy: float = math.nan
    """Share of those positions whose most probable move is the recorded one (null while
    it is off)."""
    supervised_positions: int = 0
    """Engine positions trained beside self-play: ``train.supervised_data``'s and those
    read so far from ``train.supervised_records`` (0 while both are off)."""
    prior_loss: float = math.nan
    """Mean cross-entropy of the prior head (``model.prior_head``) on those positions'
    recorded moves (null without a prior head or engine games beside)."""
    prior_accuracy: float = math.nan
    """Share of those positions whose most probable move under the prior head is the
    recorded one (null likewise)."""

    def extra_terms(self) -> list[str]:
        """The loss terms beyond PPO's that are on this update, in words (``search 2.088 on
        514``, ``engine moves 2.229 top-1 0.37 value 0.247`` ...); empty when none is. The
        plain log, the dashboard and ``bench.learning`` print these."""
        terms = []
        if self.init_kl_coef:
            terms.append(f"init_kl {self.init_kl:.3f} x {self.init_kl_coef:.2f}")
        if math.isfinite(self.value_anchor):
            terms.append(f"value anchor {self.value_anchor:.3f}")
        if self.search_targets:
            terms.append(f"search {self.search_loss:.3f} on {self.search_targets}")
        if math.isfinite(self.supervised_loss):
            terms.append(f"engine moves {self.supervised_loss:.3f} top-1 "
                         f"{self.supervised_accuracy:.2f} value {self.supervised_value_loss:.3f} "
                         f"of {self.supervised_positions}")
        if math.isfinite(self.prior_loss):
            terms.append(f"prior {self.prior_loss:.3f} top-1 {self.prior_accuracy:.2f}")
        return terms


@dataclass(frozen=True)
class GamesReport:
    """Games finished during the epoch; rates are NaN when none did."""

    games: int
    mean_game_length: float
    black_win_rate: float
    white_win_rate: float
    draw_rate: float
    terminations: dict[str, int]


@dataclass(frozen=True)
class ActorsReport:
    actors: list[dict[str, object]]  # rows (``ActorInfo.as_dict``) of the most recently heard
    actor_steps_per_second: float
    wire: dict[str, int]  # the server's counters, written as ``wire_<name>``
    actor_states: dict[str, int]  # how many actors are in each state


@dataclass(frozen=True)
class Transition:
    time: float  # seconds since the epoch
    mode: str
    cause: str


@dataclass(frozen=True)
class SupervisionReport:
    mode_transitions: int
    transitions: list[Transition]  # the last ten
    failures_detected: int
    actor_restarts: int
    in_flight_steps_discarded: int


@dataclass(frozen=True)
class Rating:
    """The newest rated policy: the refitted table and its figures."""

    ratings: dict[str, float]
    elo: float
    elo_step: int
    win_rate_random: float | None
    win_rate_greedy: float | None


@dataclass(frozen=True)
class RatingsReport:
    ratings_skipped: int
    new_rating: Rating | None = None  # results that came in this epoch


@dataclass(frozen=True)
class Ledger:
    """Where every step this learner process saw went: ``carried + received == trained +
    dropped (each reason) + waiting`` (``balanced``). ``carried`` were waiting in the
    checkpoint it resumed from; the rest count since it started."""

    carried: int
    received: int  # from actors (valid or not) and from the in-process collector
    trained: int
    dropped: dict[str, int]  # backpressure, stale, invalid, non_finite
    waiting: int  # in the buffer, and received but not yet in it

    @property
    def balanced(self) -> bool:
        return self.carried + self.received == self.trained + sum(self.dropped.values()) + self.waiting


@dataclass(frozen=True)
class RanksReport:
    """A multi-rank learner's epoch (``learner.ranks``): written as ``ranks``,
    ``rank_ledgers`` (each with its ``balanced`` verdict), ``rank_modes`` and, in the
    epochs that compare them, ``weights_checksum`` and ``weights_agree``."""

    ranks: int
    ledgers: list[Ledger]  # per rank, in rank order (the report's ``ledger`` is their sum)
    modes: list[str]  # where each rank's games came from
    weights_checksum: str | None = None  # rank 0's
    weights_agree: bool | None = None  # every rank's checksum equal to rank 0's


@dataclass(frozen=True)
class PoolReport:
    """The opponent pool (``pool.share``): written as ``pool_size``, ``pool_games`` (games
    against it finished this epoch, every rank's), ``pool_score`` (the learner's mean score
    in them, null when none finished) and ``pool`` (per opponent: name, games, the
    learner's win rate and the chance it is drawn next)."""

    size: int
    games: int
    score: float
    opponents: list[dict[str, Any]]


@dataclass(frozen=True)
class AnchorReport:
    """The moving KL anchor (``train.kl_anchor = gated``), written flat: ``anchor_version``
    (the policy version the anchor is now, 0 the start), and in an epoch with a gate its
    ``anchor_gate_score`` (the policy's score against the old anchor, null in epochs
    without one), ``anchor_gate_games`` and ``anchor_moved``."""

    anchor_version: int
    anchor_gate_score: float
    anchor_gate_games: int
    anchor_moved: bool


@dataclass(frozen=True)
class EpochReport:
    step: int
    epoch: int
    policy_version: int
    mode: Mode
    steps_per_second: float
    steps_dropped_stale: int
    time: float  # seconds since the epoch
    collect: CollectReport
    update: UpdateReport
    games: GamesReport
    actors: ActorsReport | None = None
    supervision: SupervisionReport | None = None
    ratings: RatingsReport | None = None
    ledger: Ledger | None = None  # written as one ``ledger`` object
    ranks: RanksReport | None = None  # several learner ranks only
    pool: PoolReport | None = None  # with an opponent pool only
    anchor: AnchorReport | None = None  # with train.kl_anchor = gated only
    train_seconds: float = 0.0  # wall-clock of the epochs trained, across resumes (train.minutes)

    def to_json(self) -> dict[str, Any]:
        """The flat ``metrics.jsonl`` record (NaN and infinities as null)."""
        record: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, ActorsReport):
                record.update(actors=value.actors, actor_steps_per_second=value.actor_steps_per_second,
                              actor_states=value.actor_states)
                record.update({f"wire_{name}": count for name, count in value.wire.items()})
            elif isinstance(value, RatingsReport):
                record["ratings_skipped"] = value.ratings_skipped
                if value.new_rating is not None:
                    record.update(asdict(value.new_rating))
            elif isinstance(value, PoolReport):
                record.update(pool_size=value.size, pool_games=value.games,
                              pool_score=value.score, pool=value.opponents)
            elif isinstance(value, Ledger):
                record["ledger"] = asdict(value)
            elif isinstance(value, RanksReport):
                record.update(ranks=value.ranks, rank_modes=value.modes,
                              rank_ledgers=[{**asdict(ledger), "balanced": ledger.balanced}
                                            for ledger in value.ledgers])
                if value.weights_checksum is not None:
                    record.update(weights_checksum=value.weights_checksum,
                                  weights_agree=value.weights_agree)
            elif isinstance(value, CollectReport | UpdateReport | GamesReport | SupervisionReport
                            | AnchorReport):
                record.update(asdict(value))
            elif value is not None:
                record[item.name] = str(value) if isinstance(value, Mode) else value
        return cast(dict[str, Any], _finite(record))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value

