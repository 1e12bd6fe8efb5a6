"""Configs: typed, validated, unknown keys rejected with a did-you-mean; every shipped example parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from specialize.config import load_config, parse_config, save_config
from specialize.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"train.learning_rte: unknown key; did you mean 'learning_rate'"):
        parse_config({"train": {"learning_rte": 0.1}})


def test_unknown_section_lists_known_ones():
    with pytest.raises(ConfigError, match=r"trian: unknown key; did you mean 'train'"):
        parse_config({"trian": {}})


def test_bad_values_are_named():
    with pytest.raises(
        ConfigError, match=r"method.kind: Input should be 'lora', 'qlora', 'full', 'dpo' or 'kto'"
    ):
        parse_config({"method": {"kind": "prefix-tuning"}})
    with pytest.raises(ConfigError, match="must leave most rows for training"):
        parse_config({"data": {"val_fraction": 0.5, "test_fraction": 0.45}})


def test_round_trip_and_relative_paths(tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n")
    (tmp_path / "cfg.yaml").write_text("data:\n  train: train.csv\ntrain:\n  epochs: 2\n")
    config = load_config(tmp_path / "cfg.yaml")
    assert Path(config.data.train) == tmp_path / "train.csv"
    assert config.learning_rate == 1e-3
    save_config(config, tmp_path / "out.yaml")
    assert load_config(tmp_path / "out.yaml") == config


@pytest.mark.parametrize("text, message", [("[1, 2]", "a config is a mapping"), ("a: [", "not valid YAML")])
def test_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/*/config.yaml")), ids=lambda p: p.parent.name)
def test_shipped_example_configs_parse_and_name_their_command(path):
    config = load_config(path)
    assert Path(config.data.train).is_file()
    assert path.read_text().startswith("#") and "specialize run" in path.read_text().splitlines()[1]
