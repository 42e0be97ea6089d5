"""The metric fields of ``metrics.jsonl`` that are charted: each one's name (the key the
report writes), label and unit, and the band a healthy run stays in; and the charts
drawn of them. The web page (which receives them from the server), ``keisei-plot`` and
TensorBoard's chart layout all take their names from here, and a test holds the report
to them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    name: str  # the key in each metrics.jsonl line
    label: str
    unit: str = ""  # "" for a plain number
    low: float | None = None  # a healthy run stays within [low, high] (None: no bound)
    high: float | None = None
    nonnegative: bool = False  # a chart's axis starts at 0 or above


@dataclass(frozen=True)
class Chart:
    title: str
    group: str  # charts of one group share a PNG of keisei-plot and a TensorBoard section
    fields: tuple[str, ...]
    log: bool = False  # a log scale (values <= 0 are left out)


FIELDS = (
    Field("policy_loss", "policy loss"),
    Field("value_loss", "value loss", nonnegative=True),
    Field("entropy", "policy entropy", "nats", nonnegative=True),
    Field("search_loss", "search-target loss", "nats", nonnegative=True),
    # What holds self-play near strong play, while it is on: the KL penalty toward the start
    # (train.init_kl_coef), the value anchor (train.value_anchor_coef) and the engine games
    # trained beside self-play (train.supervised_data)
    Field("init_kl", "KL from the start", "nats", nonnegative=True),
    Field("value_anchor", "value anchor", "", nonnegative=True),
    Field("supervised_value_loss", "engine results", "", nonnegative=True),
    Field("supervised_loss", "engine moves' cross-entropy", "nats", nonnegative=True),
    Field("supervised_accuracy", "engine moves' top-1", "fraction", nonnegative=True),
    Field("prior_loss", "prior head's cross-entropy", "nats", nonnegative=True),
    Field("prior_accuracy", "prior head's top-1", "fraction", nonnegative=True),
    # The PPO update's health: an approximate KL well above 0.05 or a clip fraction above
    # about 0.3 says the steps are too large; an explained variance below 0 says the value
    # head predicts the returns worse than their mean does.
    Field("approx_kl", "sampled estimate", "nats", high=0.05, nonnegative=True),
    Field("exact_kl", "exact", "nats", high=0.05, nonnegative=True),
    Field("clipfrac", "clip fraction", "fraction", high=0.3, nonnegative=True),
    Field("explained_variance", "explained variance", "", low=0.0, high=1.0),
    Field("grad_norm", "gradient norm", "", nonnegative=True),
    Field("learning_rate", "learning rate", "", nonnegative=True),
    Field("steps_per_second", "learner", "steps/s", nonnegative=True),
    Field("actor_steps_per_second", "actors", "steps/s", nonnegative=True),
    Field("collect_seconds", "collect", "s", nonnegative=True),
    Field("update_seconds", "update", "s", nonnegative=True),
    Field("mean_game_length", "mean game length", "plies", nonnegative=True),
    Field("black_win_rate", "black wins", "fraction", nonnegative=True),
    Field("white_win_rate", "white wins", "fraction", nonnegative=True),
    Field("draw_rate", "draws", "fraction", nonnegative=True),
    Field("elo", "Elo (random = 0)"),
)
BY_NAME = {field.name: field for field in FIELDS}

CHARTS = (
    Chart("policy loss", "losses", ("policy_loss",)),
    Chart("value loss", "losses", ("value_loss",)),
    Chart("entropy", "losses", ("entropy",)),
    Chart("search-target loss", "losses", ("search_loss",)),
    Chart("KL from the start", "anchors", ("init_kl",)),
    Chart("value: squared distance from the anchor, loss on engine results", "anchors",
          ("value_anchor", "supervised_value_loss")),
    Chart("engine moves' cross-entropy", "anchors", ("supervised_loss", "prior_loss")),
    Chart("engine moves' top-1", "anchors", ("supervised_accuracy", "prior_accuracy")),
    Chart("KL from the pre-update policy", "update", ("exact_kl", "approx_kl"), log=True),
    Chart("clip fraction", "update", ("clipfrac",)),
    Chart("explained variance", "update", ("explained_variance",)),
    Chart("gradient norm", "update", ("grad_norm",)),
    Chart("learning rate", "update", ("learning_rate",)),
    Chart("steps per second", "throughput", ("steps_per_second", "actor_steps_per_second")),
    Chart("seconds per epoch", "throughput", ("collect_seconds", "update_seconds")),
    Chart("game length", "games", ("mean_game_length",)),
    Chart("self-play results", "games", ("black_win_rate", "white_win_rate", "draw_rate")),
    Chart("Elo (random = 0), 95% interval", "ratings", ("elo",)),
)


def outside_band(record: dict[str, Any]) -> list[str]:
    """The fields of a metrics record outside the band a healthy run stays in, as words
    (``clip fraction 0.708 > 0.3``); empty when all are within or have no band."""
    found = []
    for field in FIELDS:
        value = record.get(field.name)
        if not isinstance(value, int | float) or value != value:  # absent, null or NaN
            continue
        name = field.label if field.name not in ("approx_kl", "exact_kl") else f"KL ({field.label})"
        if field.high is not None and value > field.high:
            found.append(f"{name} {value:.3g} > {field.high:g}")
        elif field.low is not None and value < field.low:
            found.append(f"{name} {value:.3g} < {field.low:g}")
    return found


def unit_of(chart: Chart) -> str:
    """The unit of a chart's fields (they share one)."""
    return BY_NAME[chart.fields[0]].unit


def describe() -> dict[str, Any]:
    """The fields and charts as JSON (what the web page receives)."""
    return {"fields": [asdict(field) for field in FIELDS],
            "charts": [{**asdict(chart), "fields": list(chart.fields), "unit": unit_of(chart)}
                       for chart in CHARTS]}


def tensorboard_layout() -> dict[str, dict[str, list[Any]]]:
    """TensorBoard's custom-scalars layout: a section per group, a chart per ``Chart``
    (the scalars are written under the fields' names)."""
    layout: dict[str, dict[str, list[Any]]] = {}
    for chart in CHARTS:
        title = f"{chart.title} ({unit_of(chart)})" if unit_of(chart) else chart.title
        layout.setdefault(chart.group, {})[title] = ["Multiline", list(chart.fields)]
    return layout
