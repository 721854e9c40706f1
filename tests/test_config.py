from __future__ import annotations

from pathlib import Path

import pytest

from matloop.config import ConfigError, load_config, parse_config

QUICKSTART = Path(__file__).resolve().parents[1] / "deployments" / "campaigns" / "quickstart.yaml"


def _minimal(**overrides) -> dict:
    data = {"name": "demo", "chemical_space": {"elements": ["Ca", "Ti", "O"], "max_atoms": 10}}
    data.update(overrides)
    return data


def test_quickstart_config_is_valid():
    config = load_config(QUICKSTART)
    assert config.chemical_space.elements == ["Ca", "Ti", "O"]
    assert config.budget.rounds >= 3
    assert config.store.startswith("sqlite://")


def test_defaults_fill_a_minimal_config():
    config = parse_config(_minimal())
    assert config.relaxer.potential == "CHGNet"
    assert config.acquisition.strategy == "ucb"
    assert [g.name for g in config.generators] == ["prototype_substitution", "random_symmetric"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"chemical_space": {"elements": ["Ca", "Xx"]}},
         "chemical_space.elements: unknown element symbol(s): Xx"),
        ({"chemical_space": {"elements": ["Ca"], "max_atoms": 0}}, "chemical_space.max_atoms"),
        ({"budget": {"relaxations_per_round": 50, "candidates_per_round": 10}},
         "relaxations_per_round (50) cannot exceed candidates_per_round (10)"),
        ({"budget": {"rounds": "three"}}, "budget.rounds: Input should be a valid integer"),
        ({"generators": [{"name": "magic"}]}, "unknown generator 'magic'"),
        ({"relaxer": {"potential": "MACE"}}, "relaxer.potential"),
        ({"acquisition": {"strategy": "best"}}, "acquisition.strategy"),
        ({"store": "redis://x"}, "store: store URI scheme 'redis' is not supported"),
        ({"name": "bad name!"}, "name: must start with a letter or digit"),
        ({"budgett": {}}, "budgett: unknown field"),
        ({"objective": {"property": {"name": "dir_gap", "min": 3, "max": 1}}},
         "min (3.0) is larger than max (1.0)"),
    ],
)
def test_wrong_values_name_the_field_and_the_expectation(overrides, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(_minimal(**overrides), source="campaign.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("campaign.yaml:")


def test_yaml_problems_are_reported_before_any_work(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: demo\nchemical_space: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_yaml_is_loaded_safely(tmp_path):
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(hostile)
