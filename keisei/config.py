"""Typed configuration: one frozen dataclass per section, loaded from TOML plus ``--set``.

Every field has a type, a default and help text (``Config.describe()`` lists them for
``--help``). Loading collects every problem (unknown section or key, wrong type, value
out of range) into one ``ConfigError`` whose lines name the field, the value and what
is allowed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keisei.errors import KeiseiError
from keisei.rundir import RunDir

logger = logging.getLogger(__name__)


class ConfigError(KeiseiError, ValueError):
    """One or more configuration values are invalid; each line of the message names one."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


def setting(default: Any, help: str, *, low: float | None = None, high: float | None = None,
            choices: Sequence[str] | None = None) -> Any:
    """A config field with its help text and allowed range (inclusive) or choices."""
    return field(default=default, metadata={"help": help, "low": low, "high": high,
                                            "choices": tuple(choices) if choices else None})


@dataclass(frozen=True)
class RunConfig:
    dir: str = setting("runs/default", "run directory: config.toml, checkpoints/, metrics.jsonl")
    resume: str = setting("never", "what keisei-learner does when run.dir already holds a run "
                          "(--resume overrides): never (refuse it), always (continue it; "
                          "refuse an empty run.dir), auto (continue one if there is one, "
                          "else start fresh: for unattended restarts)",
                          choices=("never", "auto", "always"))
    seed: int = setting(0, "seed for weights, sampling and shuffling (a sequential CPU run "
                        "with the same seed and threads is reproducible)", low=0)
    device: str = setting("cpu", "torch device for the learner: cpu, cuda, cuda:N")
    threads: int = setting(0, "torch CPU threads for the learner (0: all cores)", low=0, high=256)
    precision: str = setting("auto", "network arithmetic: auto (float16 mixed precision on CUDA, "
                             "bfloat16 on CPUs with native bf16, else float32)",
                             choices=("auto", "float32", "bfloat16", "float16"))
    wandb_project: str = setting("", "also log to this Weights & Biases project (pip install "
                                 "'keisei[wandb]'; '' : off): the metrics, the configuration, "
                                 "the ratings and the final checkpoint; --resume continues the "
                                 "same W&B run")
    wandb_entity: str = setting("", "the W&B team or user ('': your default)")
    wandb_mode: str = setting("online", "online, or offline (written under the run directory; "
                              "wandb sync uploads it later)", choices=("online", "offline"))


@dataclass(frozen=True)
class ModelConfig:
    blocks: int = setting(6, "residual blocks", low=1, high=40)
    channels: int = setting(64, "channels per convolution", low=8, high=512)
    se_ratio: int = setting(0, "squeeze-and-excitation reduction ratio (0: no SE)", low=0, high=64)
    value_hidden: int = setting(128, "hidden units of the value head", low=8, high=1024)
    norm: str = setting("batch", "normalisation in the tower and the value head: batch (batch "
                        "norm: a PPO update trains with each minibatch's statistics while the "
                        "policy acts with running ones, so the two differ before any step) or "
                        "none (biases, and each residual branch scaled by a learnt gate that "
                        "starts at 0: the policy trained is the policy that acts)",
                        choices=("batch", "none"))
    prior_head: bool = setting(False, "a second policy head, the search's prior, trained only "
                               "on engine moves (keisei-pretrain's records, and the "
                               "engine games trained beside self-play): every search (self-play's "
                               "targets, keisei-eval --visits, keisei-usi, the web view) takes its "
                               "priors from it and its value from the shared value head, while "
                               "the policy head plays raw and learns from self-play (the AlphaGo "
                               "split: the supervised policy was the better prior). A network "
                               "saved without one gets it as a copy of its policy head")


@dataclass(frozen=True)
class SelfPlayConfig:
    games: int = setting(64, "games played in lock-step per collector (one forward pass each ply)",
                         low=1, high=4096)
    max_plies: int = setting(512, "plies after which a game is a draw", low=1, high=10_000)
    temperature: float = setting(1.0, "softmax temperature when sampling moves (1: on-policy)",
                                 low=0.05, high=10.0)
    entering_king: bool = setting(True, "apply entering-king (27-point) declarations")
    mate_search: int = setting(3, "search-assisted self-play: play a forced mate of at most "
                               "this many plies (1, 3, 5...) whenever cshogi finds one, recorded "
                               "with the network's own log-probability of that move so PPO "
                               "learns it as if sampled; 0: off. A policy player (keisei-eval, "
                               "ratings, keisei-usi PolicyOnly) searches mates too, 5 plies", low=0, high=7)
    search_share: float = setting(0.0, "search targets: the share of plies on which self-play "
                                  "also runs a small search (the [search] settings, with "
                                  "exploration noise) and sends its improved policy to the "
                                  "learner as a training target (train.search_coef); the move "
                                  "played is still sampled from the network; 0: off",
                                  low=0.0, high=1.0)
    search_visits: int = setting(16, "visits of that search; it always uses the Gumbel root "
                                 "(sequential halving), whose completed-Q policy is the target",
                                 low=1, high=100_000)
    search_plays: bool = setting(False, "on the plies searched for a target, play the search's "
                                 "move (the halving's winner, its Gumbel noise the sampling) "
                                 "instead of the network's sample: the games are played by a "
                                 "stronger player than the network. Those plies then stay out "
                                 "of the policy-gradient term, as forced plies do (their "
                                 "behaviour is not the network's), and train the policy "
                                 "through their search target alone")


@dataclass(frozen=True)
class TrainConfig:
    total_steps: int = setting(1_000_000, "stop after this many training steps (plies)", low=1)
    minutes: float = setting(0.0, "also stop, as finished, at the first epoch's end after this "
                             "many minutes of training, counted across resumes (kept in "
                             "checkpoints; the learning-rate schedule still runs over "
                             "total_steps); 0: no limit", low=0.0)
    steps_per_epoch: int = setting(4096, "steps collected per PPO update", low=16)
    ppo_passes: int = setting(4, "passes over each epoch's data (at most: train.target_kl may "
                              "stop the update sooner; each report's ppo_passes says how many ran)",
                              low=1, high=100)
    minibatch_size: int = setting(256, "samples per gradient step", low=1)
    learning_rate: float = setting(3e-4, "initial Adam learning rate", low=0.0, high=1.0)
    lr_schedule: str = setting("linear", "learning-rate decay over total_steps",
                               choices=("constant", "linear", "cosine"))
    weight_decay: float = setting(1e-4, "AdamW weight decay", low=0.0, high=1.0)
    gamma: float = setting(1.0, "discount per own move", low=0.0, high=1.0)
    gae_lambda: float = setting(0.95, "GAE lambda of the advantages", low=0.0, high=1.0)
    value_lambda: float = setting(-1.0, "GAE lambda of the value target (the returns): 1 "
                                  "trains the value toward the game's result, smaller values "
                                  "toward its own later estimates; -1: gae_lambda",
                                  low=-1.0, high=1.0)
    draw_penalty: float = setting(0.0, "a drawn game (ply limit, repetition) ends with a "
                                  "reward of -draw_penalty for both players, not 0: the value "
                                  "learns which positions head for a draw and self-play "
                                  "steers away from them; 0: a draw is worth 0",
                                  low=0.0, high=1.0)
    search_value_mix: float = setting(0.0, "on plies with a search target, the value target "
                                      "is (1 - mix) x the return + mix x the search's root "
                                      "value (dlshogi uses 1/3); 0: the return alone",
                                      low=0.0, high=1.0)
    value_material_mix: float = setting(0.0, "the value target is (1 - mix) x the return + "
                                        "mix x tanh(the mover's material balance at its next "
                                        "turn / value_material_scale): a dense target that "
                                        "teaches material before results can; 0: off",
                                        low=0.0, high=1.0)
    value_material_scale: float = setting(10.0, "material balance (pawn 1 ... rook 10) at "
                                          "which that target is tanh(1) = 0.76", low=0.1,
                                          high=1000.0)
    clip_coef: float = setting(0.2, "PPO ratio clip", low=0.0, high=10.0)
    dual_clip: float = setting(0.0, "dual-clip PPO: bound a negative advantage's objective "
                               "below at dual_clip x the advantage (Ye et al. 2020 use 3; "
                               "0: off)", low=0.0, high=100.0)
    norm_statistics: str = setting("minibatch", "batch norm in a PPO update: minibatch "
                                   "(trains with each minibatch's statistics; the running "
                                   "statistics the acting policy uses follow them with "
                                   "momentum, lagging the weights), refresh (the same "
                                   "training, with the running statistics set from the "
                                   "epoch's positions before the update and again after it, "
                                   "for the weights that will act), or epoch (set before the "
                                   "update and trained with: the policy trained is the "
                                   "policy that acts)",
                                   choices=("minibatch", "refresh", "epoch"))
    decoupled_clip: bool = setting(False, "clip the ratio to the policy before this update "
                                   "instead of to the policy that played (Hilton et al. 2021), "
                                   "weighting each ply by their ratio truncated at "
                                   "behaviour_weight_cap: the clip then bounds the update's own "
                                   "step however old the actors' weights were")
    behaviour_weight_cap: float = setting(1.0, "with decoupled_clip: the largest weight "
                                          "pi_before_update / pi_played a ply gets (V-trace's "
                                          "rho-bar)", low=0.1, high=100.0)
    clip_value_loss: bool = setting(False, "clip the value loss around the old values")
    vf_coef: float = setting(0.5, "value loss weight", low=0.0, high=100.0)
    value_passes: int = setting(0, "the first passes of an update in which the value head "
                                "learns (the PPO value loss, the value anchor, engine games' "
                                "value); later passes train the policy alone. 0: every pass",
                                low=0, high=100)
    ent_coef: float = setting(0.01, "entropy bonus weight", low=0.0, high=10.0)
    max_grad_norm: float = setting(1.0, "global gradient-norm clip", low=0.0)
    target_kl: float = setting(0.0, "stop the update after a pass whose mean exact KL from the "
                               "pre-update policy exceeds this (0: never)", low=0.0)
    normalize_advantages: bool = setting(True, "normalise advantages per minibatch")
    search_coef: float = setting(1.0, "weight of the cross-entropy toward self-play's search "
                                 "targets (selfplay.search_share), per position of the "
                                 "minibatch: the loss gains search_coef x the sum of the "
                                 "targets' cross-entropies / the minibatch size", low=0.0,
                                 high=100.0)
    shaping_scale: float = setting(0.05, "reward shaping from material: each move's advantage "
                                   "gains scale x (gamma Phi(s') - Phi(s)), Phi the mover's "
                                   "material balance (pawn 1 ... rook 10, on the board and in "
                                   "hand) and s' its next position; the value still learns the "
                                   "result alone; 0: off", low=0.0, high=1.0)
    shaping_anneal_steps: int = setting(0, "the shaping weight falls linearly to 0 at this "
                                        "training step (0: it stays at shaping_scale)", low=0)
    shaping_lambda: float = setting(0.0, "GAE lambda of the shaping part of the advantages: 0 "
                                    "credits a move with the material change over it and the "
                                    "reply, larger values look further ahead", low=0.0, high=1.0)
    max_policy_lag: int = setting(16, "drop steps produced more than this many policy versions ago",
                                  low=0)
    init_kl_coef: float = setting(0.0, "with keisei-learner --init-from: weight of a penalty "
                                  "KL(initial policy || policy) over the legal moves of each "
                                  "trained position, so PPO does not wreck what pre-training "
                                  "taught; 0: off", low=0.0, high=100.0)
    init_kl_steps: int = setting(0, "the KL penalty's weight falls linearly to 0 at this "
                                 "training step (0: it stays at init_kl_coef)", low=0)
    value_anchor_coef: float = setting(0.0, "with keisei-learner --init-from: weight of a "
                                       "penalty (value - the anchor's value)^2 on each trained "
                                       "position, the anchor being the KL penalty's "
                                       "(train.kl_anchor), so the results of self-play games do "
                                       "not pull the value head away from what pre-training "
                                       "taught it; 0: off", low=0.0, high=100.0)
    supervised_data: str = setting("", "a data set keisei-pretrain prepared from engine games "
                                   "(its run's data folder): every PPO minibatch also trains on "
                                   "train.supervised_batch of its training positions, so the "
                                   "network keeps learning from those games while self-play "
                                   "steers it; empty: off")
    supervised_records: str = setting("", "a folder that keisei-generate writes engine games "
                                      "into while this run trains (keisei-generate --output "
                                      "DIR, started beside the learner, or by keisei-learner "
                                      "--beside-workers N): before every update the games "
                                      "finished since are read (at most about 1 MB of each "
                                      "file an update), and their training "
                                      "positions join those trained beside self-play, with "
                                      "train.supervised_data's if set (each minibatch's "
                                      "train.supervised_batch drawn from both in proportion "
                                      "to their sizes); split and capped as keisei-pretrain "
                                      "would split and cap that folder; empty: off")
    supervised_coef: float = setting(1.0, "with train.supervised_data or _records: weight of its loss, the "
                                     "cross-entropy on the recorded move plus vf_coef x 0.5 "
                                     "(value - result)^2, each a mean over the minibatch's "
                                     "supervised positions", low=0.0, high=100.0)
    supervised_batch: int = setting(64, "with train.supervised_data or _records: its positions per PPO "
                                    "minibatch", low=1, high=65_536)
    kl_anchor: str = setting("initial", "the policy the init_kl_coef penalty holds PPO near: "
                             "initial (the network training started from, for the whole "
                             "run) or gated (a regulariser that moves: every "
                             "anchor_every_epochs epochs the current policy plays the anchor, "
                             "and replaces it if it scores at least anchor_gate_score)",
                             choices=("initial", "gated"))
    anchor_every_epochs: int = setting(10, "with kl_anchor = gated: epochs between gates",
                                       low=1)
    anchor_gate_games: int = setting(64, "with kl_anchor = gated: games of a gate, the "
                                     "policies' most probable moves in colour-swapped pairs "
                                     "from the shipped openings (rounded up to even)", low=2,
                                     high=4096)
    anchor_gate_score: float = setting(0.55, "with kl_anchor = gated: the score against the "
                                       "anchor at which the current policy becomes the anchor",
                                       low=0.0, high=1.0)


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = setting(4, "passes over the training positions (keisei-pretrain)", low=1,
                          high=10_000)
    minutes: float = setting(0.0, "stop after this many minutes of training, finishing the "
                             "learning-rate schedule by then (0: no limit)", low=0.0)
    batch_size: int = setting(256, "positions per gradient step", low=1, high=65_536)
    learning_rate: float = setting(1e-3, "initial AdamW learning rate", low=0.0, high=1.0)
    lr_schedule: str = setting("cosine", "learning-rate decay over the run",
                               choices=("constant", "linear", "cosine"))
    weight_decay: float = setting(1e-4, "AdamW weight decay", low=0.0, high=1.0)
    policy_weight: float = setting(1.0, "weight of the cross-entropy on the recorded move",
                                   low=0.0, high=100.0)
    value_weight: float = setting(0.5, "weight of the value loss 0.5 (v - result)^2 (result from "
                                  "the mover's view; positions of games without a result add none)",
                                  low=0.0, high=100.0)
    val_fraction: float = setting(0.05, "share of games held out for validation (by game)",
                                  low=0.0, high=0.5)
    val_positions: int = setting(16_384, "held-out positions scored at each validation", low=1)
    validate_every: int = setting(0, "also validate (and write a metrics line) every this many "
                                  "training positions (0: at the end of each epoch only)", low=0)
    max_duplicates: int = setting(4, "keep a (position, move) pair at most this many times "
                                  "(0: keep every copy)", low=0, high=255)
    shard_size: int = setting(65_536, "positions per data shard on disk", low=256)
    shuffle_shards: int = setting(8, "shards read and shuffled together (bounds memory: 36 bytes "
                                  "per position)", low=1, high=4096)


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int = setting(10, "write a checkpoint every N epochs (and on exit)", low=1)
    keep: int = setting(5, "checkpoints kept (oldest removed)", low=1)


@dataclass(frozen=True)
class EvaluationConfig:
    every_epochs: int = setting(10, "rate the policy every this many epochs in a separate "
                                "process (training does not wait); 0 turns ratings off",
                                low=0, high=1_000_000)
    games: int = setting(32, "games against each opponent per rating (colour-swapped pairs "
                         "from the shipped openings; rounded up to even)", low=2, high=10_000)
    pool_size: int = setting(4, "past rated policies each new one also plays", low=0, high=100)
    max_plies: int = setting(256, "a rating game this long is a draw", low=16, high=100_000)
    visits: int = setting(0, "the rated policy searches this many visits per move (0: its "
                          "policy alone, the cheapest; a rating then costs about visits times "
                          "more network calls)", low=0, high=100_000)


@dataclass(frozen=True)
class SupervisorConfig:
    heartbeat_timeout: float = setting(5.0, "seconds without a heartbeat before an actor is stale "
                                       "(a remote one is failed after three times this)",
                                       low=0.5, high=3600)
    stall_timeout: float = setting(60.0, "seconds an actor may heartbeat without delivering games "
                                   "while the learner wants data, before it counts as failed",
                                   low=1.0, high=36_000)
    collect_timeout: float = setting(30.0, "seconds without data from any actor, while the learner "
                                     "waits for it, before it falls back to in-process collection",
                                     low=1.0, high=36_000)
    max_restarts: int = setting(5, "restarts of one local actor allowed within restart_window",
                                low=0, high=1000)
    restart_window: float = setting(600.0, "seconds over which max_restarts counts", low=1.0)
    min_actors: int = setting(1, "healthy actors delivering data needed to leave sequential mode",
                              low=1, high=10_000)


@dataclass(frozen=True)
class WireConfig:
    max_message_mb: float = setting(64.0, "largest message the learner accepts from a peer (MiB); "
                                    "larger ones are refused by ZeroMQ before they are read",
                                    low=0.01, high=4096)
    max_games_per_message: int = setting(4096, "games one message may carry", low=1, high=4096)
    max_plies_per_game: int = setting(10_000, "plies one game may claim (games also end at "
                                      "selfplay.max_plies)", low=1, high=10_000)
    max_actors: int = setting(256, "actors the learner keeps in its table; a hello beyond them "
                              "is refused until entries expire", low=1, high=100_000)
    forget_after: float = setting(600.0, "seconds after which a stopped, failed or silent "
                                  "actor's entry is removed from the table", low=1.0, high=1e6)


@dataclass(frozen=True)
class RanksConfig:
    checksum_every: int = setting(10, "with several learner ranks: compare a checksum of every "
                                  "rank's weights every this many epochs (written to "
                                  "metrics.jsonl; 0: never)", low=0, high=1_000_000)
    timeout: float = setting(600.0, "seconds a rank waits for the others at a meeting point "
                             "(an update, a checkpoint) before the job ends; a rank whose "
                             "process is gone is noticed at once", low=10.0, high=86_400)


@dataclass(frozen=True)
class DisplayConfig:
    mode: str = setting("auto", "auto: rich dashboard on a TTY, plain log lines otherwise",
                        choices=("auto", "rich", "plain"))
    refresh_seconds: float = setting(1.0, "dashboard refresh / log interval", low=0.05, high=3600)


@dataclass(frozen=True)
class SearchConfig:
    """Tree search over the network (``keisei.search``): its parameters and defaults."""

    visits: int = setting(256, "visits per move when no time is given", low=1, high=10_000_000)
    c_puct: float = setting(1.5, "PUCT exploration constant", low=0.01, high=100)
    policy_temperature: float = setting(1.0, "the network's move probabilities are taken as "
                                        "softmax(logits / this) for PUCT's priors; above 1 "
                                        "spreads visits over more moves (the Gumbel root and "
                                        "its targets use the raw logits)", low=0.1, high=10)
    fpu_reduction: float = setting(0.2, "first-play urgency below the root: an unvisited move "
                                   "is valued at the parent's value minus this times "
                                   "sqrt(prior mass already visited)", low=0, high=2)
    gumbel_visits: int = setting(0, "budgets of at most this many visits use Gumbel root "
                                 "selection with sequential halving instead of PUCT when "
                                 "playing (self-play's target search always does); 0: never. "
                                 "Measured against GNU Shogi depth 1 at 16 visits (40 games "
                                 "each): PUCT 12 wins, Gumbel 1", low=0, high=10_000)
    gumbel_actions: int = setting(16, "root moves Gumbel selection considers", low=2, high=600)
    gumbel_c_visit: float = setting(50.0, "sigma(q) = (c_visit + max visits) * c_scale * q",
                                    low=0, high=10_000)
    gumbel_c_scale: float = setting(0.1, "see gumbel_c_visit", low=0, high=100)
    leaf_batch: int = setting(16, "leaves gathered per network call when searching one "
                              "game (with virtual loss)", low=1, high=1024)
    virtual_loss: float = setting(1.0, "visits of a lost game added to a path awaiting its "
                                  "evaluation (one game only)", low=0, high=100)
    cache_positions: int = setting(100_000, "network outputs kept, keyed by position hash "
                                   "(0: no cache)", low=0, high=100_000_000)
    root_mate_plies: int = setting(5, "cshogi's mate search at the root, up to this many "
                                   "plies (a mate in one is always looked for); a mate found "
                                   "is played at once", low=0, high=15)
    dirichlet_alpha: float = setting(0.15, "Dirichlet noise at the root in self-play",
                                     low=0.001, high=10)
    dirichlet_fraction: float = setting(0.25, "share of the root prior replaced by that noise "
                                        "in self-play (0: none); evaluation never adds it",
                                        low=0, high=1)


@dataclass(frozen=True)
class PoolConfig:
    """Opponents from the past (``keisei.pool``): played by the learner's own collector and
    by its actors, to whom the learner publishes the pool."""

    share: float = setting(0.0, "share of self-play games, in-process and actors', played "
                           "against an opponent drawn from the pool (only the learner's own "
                           "plies train); 0: off", low=0.0, high=1.0)
    size: int = setting(8, "past policies the pool holds (the start network of an "
                        "--init-from run is kept besides)", low=1, high=1000)
    every_epochs: int = setting(10, "the current policy joins the pool every this many epochs",
                                low=1)
    power: float = setting(2.0, "PFSP: an opponent the learner beats at rate x is drawn with "
                           "weight (1 - x)^power (0: uniform)", low=0.0, high=10.0)


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    selfplay: SelfPlayConfig = field(default_factory=SelfPlayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    ranks: RanksConfig = field(default_factory=RanksConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The whole config as TOML (every key, defaults included)."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
            lines.append("")
        return "\n".join(lines)

    @staticmethod
    def section_names() -> list[str]:
        """The configuration's sections, in declaration order."""
        return list(_section_classes())

    @staticmethod
    def describe(sections: Collection[str] | None = None) -> str:
        """One line per key: name, type, default and help (for ``--help-config``), of the
        ``sections`` named (default: all)."""
        lines = []
        for section_name, section_class in _section_classes().items():
            if sections is not None and section_name not in sections:
                continue
            for item in dataclasses.fields(section_class):
                meta = item.metadata
                allowed = _allowed_text(meta)
                lines.append(f"  {section_name}.{item.name} ({_type_name(item)}, default "
                             f"{_toml_value(item.default)}{allowed}): {meta['help']}")
        return "\n".join(lines)


def _section_classes() -> dict[str, Any]:
    """Section name → its dataclass, in declaration order."""
    return {item.name: item.default_factory for item in dataclasses.fields(Config)}


def _type_name(item: dataclasses.Field[Any]) -> str:
    return str(item.type) if isinstance(item.type, str) else item.type.__name__


def _allowed_text(meta: Mapping[str, Any]) -> str:
    if meta["choices"]:
        return "; one of " + ", ".join(meta["choices"])
    if meta["low"] is not None and meta["high"] is not None:
        return f"; {meta['low']}..{meta['high']}"
    if meta["low"] is not None:
        return f"; >= {meta['low']}"
    return ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _check_value(name: str, item: dataclasses.Field[Any], value: Any) -> tuple[Any, str | None]:
    """Coerce ``value`` to the field's type; return it, or an error naming the field."""
    kind = _type_name(item)
    meta = item.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            return None, f"{name} = {value!r}: expected true or false"
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{name} = {value!r}: expected an integer{_allowed_text(meta)}"
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None, f"{name} = {value!r}: expected a finite number{_allowed_text(meta)}"
        value = float(value)
    elif not isinstance(value, str):
        return None, f"{name} = {value!r}: expected a string{_allowed_text(meta)}"
    if meta["choices"] and value not in meta["choices"]:
        return None, f"{name} = {value!r}: allowed values are {', '.join(meta['choices'])}"
    if kind in ("int", "float"):
        if (meta["low"] is not None and value < meta["low"]) or (
                meta["high"] is not None and value > meta["high"]):
            return None, f"{name} = {value!r}: out of range{_allowed_text(meta)}"
    return value, None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` → (section, key, value); the value is read as TOML, or as a
    bare string when it is not valid TOML (so ``--set run.dir=runs/x`` needs no quotes).

    :raises ConfigError: if the text has no ``=`` or no dotted key.
    """
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected section.key=value"])
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError([f"--set {text!r}: the key must be section.key, e.g. train.total_steps"])
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts[0], parts[1], value


RENAMED_KEYS = {"train.ppo_epochs": "train.ppo_passes"}
"""Old key → its new name: still read (saved runs and users' files hold them), with a
warning."""


def build_config(layers: Iterable[Mapping[str, Mapping[str, Any]]]) -> Config:
    """Apply layers of ``{section: {key: value}}`` over the defaults, later layers winning.

    :raises ConfigError: listing every unknown key, wrong type and out-of-range value.
    """
    classes = _section_classes()
    merged: dict[str, dict[str, Any]] = {name: {} for name in classes}
    problems: list[str] = []
    for layer in layers:
        for section, values in layer.items():
            if section not in classes:
                problems.append(f"[{section}]: unknown section; sections are {', '.join(classes)}")
                continue
            if not isinstance(values, Mapping):
                problems.append(f"{section} = {values!r}: expected a table of keys")
                continue
            fields = {item.name: item for item in dataclasses.fields(classes[section])}
            for key, value in values.items():
                name = f"{section}.{key}"
                if name in RENAMED_KEYS:
                    logger.warning("%s is now called %s; read as that", name, RENAMED_KEYS[name])
                    name = RENAMED_KEYS[name]
                    key = name.split(".", 1)[1]
                if key not in fields:
                    problems.append(f"{name}: unknown key; {section} has {', '.join(fields)}")
                    continue
                checked, problem = _check_value(name, fields[key], value)
                if problem:
                    problems.append(problem)
                else:
                    merged[section][key] = checked
    if problems:
        raise ConfigError(problems)
    config = Config(**{name: classes[name](**values) for name, values in merged.items()})
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def saved_model_settings(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``[model]`` table with the defaults of keys it predates filled in
    (a checkpoint from before ``model.norm`` holds a batch-norm network)."""
    return {**dataclasses.asdict(ModelConfig()), **saved}


def _cross_checks(config: Config) -> list[str]:
    train = config.train
    problems = []
    if train.minibatch_size > train.steps_per_epoch:
        problems.append(f"train.minibatch_size = {train.minibatch_size}: must not exceed "
                        f"train.steps_per_epoch = {train.steps_per_epoch}")
    if train.value_lambda < 0 and train.value_lambda != -1:
        problems.append(f"train.value_lambda = {train.value_lambda}: must lie in [0, 1], or be -1 "
                        "for train.gae_lambda")
    if 0 < train.dual_clip <= 1:
        problems.append(f"train.dual_clip = {train.dual_clip}: must be above 1 (3 is usual), "
                        "or 0 for off")
    if train.kl_anchor == "gated" and train.init_kl_coef == 0:
        problems.append("train.kl_anchor = gated moves the anchor of the KL penalty, which is "
                        "off: set train.init_kl_coef above 0")
    if config.selfplay.search_plays and config.selfplay.search_share == 0:
        problems.append("selfplay.search_plays = true plays the moves of the target search, "
                        "which is off: set selfplay.search_share above 0")
    device = config.run.device
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        problems.append(f"run.device = {device!r}: expected cpu, cuda or cuda:N")
    return problems


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file.

    :raises ConfigError: if it cannot be read or parsed (naming the file and the error).
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc


def overrides_to_layer(overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    layer: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        layer.setdefault(section, {})[key] = value
    return layer


def load_saved_config(path: str | Path | None, overrides: Sequence[str], run_dir: Path,
                      flag: str = "--resume") -> Config:
    """The configuration to resume the run in ``run_dir`` with: defaults < its saved
    ``config.toml`` < the TOML file at ``path`` < ``overrides``.

    :raises ConfigError: if the run has no saved configuration (``flag`` names the option
        that asked for the resume), or a value is invalid.
    """
    saved = RunDir(run_dir).config
    if not saved.is_file():
        raise ConfigError([f"{flag}: {saved} does not exist; there is no run to resume"])
    return load_config(path, overrides, base=read_toml(saved))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Mapping[str, Mapping[str, Any]] | None = None) -> Config:
    """Defaults, then ``base`` (e.g. a resumed run's saved config), then the TOML file at
    ``path``, then ``--set`` overrides.

    :raises ConfigError: listing every problem found.
    """
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    if base is not None:
        layers.append(base)
    if path is not None:
        layers.append(read_toml(path))
    layers.append(overrides_to_layer(overrides))
    return build_config(layers)


def markdown_reference() -> str:
    """The configuration reference as Markdown (``docs/configuration.md`` is this output)."""
    lines = ["# Configuration reference", "",
             "Generated from `keisei/config.py` by `python -m keisei.config > docs/configuration.md`;",
             "a test keeps this file equal to that output. Set keys in a TOML file (`--config`) or",
             "with `--set section.key=value`.", ""]
    for section_name, section_class in _section_classes().items():
        lines += [f"## [{section_name}]", "", "| key | type | default | allowed | meaning |",
                  "|---|---|---|---|---|"]
        for item in dataclasses.fields(section_class):
            allowed = _allowed_text(item.metadata).removeprefix("; ") or "any"
            lines.append(f"| `{section_name}.{item.name}` | {_type_name(item)} | "
                         f"`{_toml_value(item.default)}` | {allowed} | {item.metadata['help']} |")
        lines.append("")
    return "\n".join(lines)


def check_sections(overrides: Sequence[str], sections: Collection[str], command: str) -> None:
    """Refuse a ``--set SECTION.KEY=VALUE`` whose section ``command`` does not read: it
    would change nothing (a TOML file may hold every section; only ``--set`` is checked).

    :raises ConfigError: naming each such setting and the sections that do apply.
    """
    wrong = [text for text in overrides if text.split(".", 1)[0].strip() in _section_classes()
             and text.split(".", 1)[0].strip() not in sections]
    if wrong:
        raise ConfigError([f"--set {text!r}: {command} does not read "
                           f"[{text.split('.', 1)[0].strip()}], so it would change nothing here "
                           f"(it reads {', '.join(sorted(sections))})" for text in wrong])


def load_search_config(path: str | Path | None, settings: Sequence[str]) -> SearchConfig:
    """The ``[search]`` section of the TOML file at ``path`` (or the defaults) with
    ``settings`` (``search.KEY=VALUE`` each) applied: what a searching player is given
    (``keisei-usi``, ``keisei-eval --visits``).

    :raises ConfigError: naming each setting that is malformed, unknown, out of range, or
        not in ``[search]`` (it would change nothing there).
    """
    outside = [f"--set {setting!r}: only search.KEY=VALUE settings apply to a search"
               for setting in settings if not setting.strip().startswith("search.")]
    if outside:
        raise ConfigError(outside)
    return load_config(path, settings).search


if __name__ == "__main__":
    print(markdown_reference(), end="")
