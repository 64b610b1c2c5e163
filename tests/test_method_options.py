"""The config options of RIA, DSnoT, OWL and cross-calibration: valid as written, bad ones named."""

import copy

import pytest
from test_config import default_config

from dpruner.config import validate_config
from dpruner.errors import ConfigError
from dpruner.methods import get_pruner

NEW_METHODS = {
    "ria": {"kind": "ria", "calibration": "domain", "alpha": 0.5},
    "dsnot": {"kind": "dsnot", "initial": "sparsegpt", "max_cycles": 50, "skip": []},
    "wanda-owl": {"kind": "wanda", "allocation": "owl", "owl_m": 5, "owl_lambda": 0.08},
    "sparsegpt-cross": {"kind": "sparsegpt", "calibration": "cross", "coefficient": 0.3},
    "ria-owl": {"kind": "ria", "allocation": "owl"},
}


def with_methods(**methods) -> dict:
    config = copy.deepcopy(default_config())
    config["methods"].update(methods)
    return config


def test_the_new_methods_and_options_are_valid():
    validate_config(with_methods(**NEW_METHODS))


def test_dpruner_takes_the_owl_allocation():
    config = default_config()
    entry = {**config["methods"]["dpruner"], "allocation": "owl", "owl_lambda": 0.05}
    validate_config(with_methods(**{"dpruner-owl": entry}))


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"kind": "wanda", "owl_m": 5}, ["methods.bad", "allocation"]),
        ({"kind": "sparsegpt", "calibration": "cross"}, ["methods.bad", "coefficient"]),
        ({"kind": "wanda", "calibration": "domain", "coefficient": 0.5}, ["methods.bad", "cross"]),
        ({"kind": "dsnot", "group": "matrix"}, ["methods.bad.group", "matrix"]),
        ({"kind": "ria", "alpha": -1}, ["methods.bad.alpha", "-1"]),
        ({"kind": "ria", "calibration": "cross", "coefficient": 0.5}, ["methods.bad"]),
    ],
)
def test_a_bad_option_is_named(entry, named):
    with pytest.raises(ConfigError) as error:
        validate_config(with_methods(bad=entry), source="bad.yaml")
    for text in named:
        assert text in str(error.value)


def test_the_pruners_take_their_defaults_from_the_schema():
    ria, dsnot = get_pruner("ria"), get_pruner("dsnot")
    assert ria.alpha == 0.5
    assert (dsnot.initial, dsnot.max_cycles, dsnot.update_threshold) == ("wanda", 50, 0.1)
    assert (dsnot.variance_power, dsnot.same_sign, dsnot.skip) == (1, False, {"mlp"})
