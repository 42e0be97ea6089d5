"""The one list of metric fields: the report writes every one of them, every chart draws
listed fields, and the page, the plots and TensorBoard take them from there."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from helpers import EPOCH_FIELDS, epoch_report

from learner.fields import BY_NAME, CHARTS, FIELDS, describe, tensorboard_layout
from learner.reports import ActorsReport, Rating
from learner.view.run_files import CURVE_FIELDS
from learner.view.server import WebView


def test_the_report_writes_every_listed_field() -> None:
    report = epoch_report(512, 2, rating=Rating({"random": 0.0}, 120.0, 256, 1.0, 0.5))
    from dataclasses import replace

    report = replace(report, actors=ActorsReport([], 12.5, {}, {}))  # type: ignore[type-var]
    written = set(report.to_json())  # type: ignore[attr-defined]
    assert {field.name for field in FIELDS} <= written, {field.name for field in FIELDS} - written
    # without actors or a rating the report still writes all the others
    assert {field.name for field in FIELDS} - EPOCH_FIELDS == {"actor_steps_per_second", "elo"}


def test_charts_draw_listed_fields_of_one_unit_and_every_field_is_drawn() -> None:
    assert len({field.name for field in FIELDS}) == len(FIELDS)
    drawn = [name for chart in CHARTS for name in chart.fields]
    assert set(drawn) == set(BY_NAME), set(BY_NAME) ^ set(drawn)
    for chart in CHARTS:
        assert len({BY_NAME[name].unit for name in chart.fields}) == 1, chart.title
        assert not (chart.log and any(BY_NAME[name].low is not None and BY_NAME[name].low <= 0
                                      for name in chart.fields)), chart.title
    for field in FIELDS:
        if field.low is not None and field.high is not None:
            assert field.low < field.high, field.name
    assert set(CURVE_FIELDS) == {"step", "time", *BY_NAME}  # the page's curve points
    layout = tensorboard_layout()
    assert {chart.group for chart in CHARTS} == set(layout)
    assert sorted(name for section in layout.values() for _, names in section.values()
                  for name in names) == sorted(drawn)
    assert layout["update"]["clip fraction (fraction)"] == ["Multiline", ["clipfrac"]]
    assert layout["update"]["KL from the pre-update policy (nats)"] == ["Multiline",
                                                                        ["exact_kl", "approx_kl"]]


def test_the_page_receives_the_fields_from_the_server(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("")
    with WebView("127.0.0.1:0", [tmp_path]) as web, \
            urllib.request.urlopen(f"{web.url}api/fields", timeout=10) as response:
        answer = json.loads(response.read())
    assert answer == json.loads(json.dumps(describe()))
    clip = next(field for field in answer["fields"] if field["name"] == "clipfrac")
    assert clip == {"name": "clipfrac", "label": "clip fraction", "unit": "fraction", "low": None,
                    "high": 0.3, "nonnegative": True}
    kl = next(chart for chart in answer["charts"] if "approx_kl" in chart["fields"])
    assert kl["fields"] == ["exact_kl", "approx_kl"]
    assert kl["log"] is True and kl["unit"] == "nats" and kl["group"] == "update"
