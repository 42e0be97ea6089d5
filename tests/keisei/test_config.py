"""Config loading: TOML, --set, and errors that name the field."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from keisei.config import Config, ConfigError, build_config, load_config, parse_override


def test_defaults_toml_and_overrides_layer_in_order(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[train]\ntotal_steps = 5000\n[model]\nblocks = 3\n')
    config = load_config(path, ["model.blocks=4", "run.dir=runs/x", "selfplay.temperature=2"])
    assert config.train.total_steps == 5000
    assert config.model.blocks == 4  # --set wins over the file
    assert config.run.dir == "runs/x"  # bare strings need no quotes
    assert config.selfplay.temperature == 2.0 and isinstance(config.selfplay.temperature, float)
    assert config.model.channels == Config().model.channels


def test_print_config_round_trips() -> None:
    config = load_config(None, ["train.lr_schedule=cosine", "run.dir=a \"quoted\" dir"])
    assert build_config([tomllib.loads(config.to_toml())]) == config


def test_every_problem_is_reported_with_field_value_and_range() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["train.total_steps=0", "model.blok=3", "train.lr_schedule=exp",
                           "nosuch.key=1", "selfplay.entering_king=3", "train.gamma=1.5"])
    problems = caught.value.problems
    assert len(problems) == 6
    text = str(caught.value)
    for expected in ("train.total_steps = 0: out of range; >= 1", "model.blok: unknown key",
                     "allowed values are constant, linear, cosine", "[nosuch]: unknown section",
                     "selfplay.entering_king = 3: expected true or false",
                     "train.gamma = 1.5: out of range; 0.0..1.0"):
        assert expected in text


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="minibatch_size"):
        load_config(None, ["train.steps_per_epoch=64", "train.minibatch_size=128"])
    with pytest.raises(ConfigError, match="run.device"):
        load_config(None, ["run.device=tpu"])
    with pytest.raises(ConfigError, match="kl_anchor = gated .* set train.init_kl_coef"):
        load_config(None, ["train.kl_anchor=gated"])
    with pytest.raises(ConfigError, match="search_plays = true .* set selfplay.search_share"):
        load_config(None, ["selfplay.search_plays=true"])
    assert load_config(None, ["selfplay.search_plays=true",
                              "selfplay.search_share=0.25"]).selfplay.search_plays


def test_bad_override_syntax_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.total_steps")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("total_steps=3")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_describe_lists_every_key_with_help() -> None:
    text = Config.describe()
    for key in ("run.dir", "train.total_steps", "train.steps_per_epoch", "model.blocks",
                "model.channels", "selfplay.games", "selfplay.max_plies", "checkpoint.every_epochs"):
        assert f"  {key} (" in text


def test_configuration_reference_is_up_to_date() -> None:
    from pathlib import Path

    from keisei.config import markdown_reference

    reference = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert reference.read_text() == markdown_reference(), (
        "docs/configuration.md is stale: run python -m keisei.config > docs/configuration.md")


def test_a_renamed_key_is_still_read_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        config = load_config(None, ["train.ppo_epochs=3"])  # the name before ppo_passes
    assert config.train.ppo_passes == 3
    assert "train.ppo_epochs is now called train.ppo_passes" in caplog.text


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml")),
                         ids=lambda path: path.name)
def test_every_shipped_configuration_loads(path: Path) -> None:
    config = load_config(path)
    assert config.train.total_steps > 0
