"""Config validation: the shipped configs pass; a bad key or value fails with a message naming it,
both in the package (dpruner.config) and in the workflow (Snakefile, snakemake.utils.validate)."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpruner.config import domain_config, load_config, validate_config
from dpruner.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def misspelt_key(config):
    config["sparsites"] = config.pop("sparsities")


def unknown_method(config):
    config["methods"]["wanda"]["kind"] = "wando"


def sparsity_above_one(config):
    config["sparsities"] = [1.5]


def misspelt_method_option(config):
    config["methods"]["dpruner"]["lamda"] = config["methods"]["dpruner"].pop("lambda")


def misspelt_source_option(config):
    config["domains"]["legal"]["perplexity"]["source"]["category"] = ["Commercial"]


def underscore_in_domain_name(config):
    config["domains"]["legal_eu"] = config["domains"].pop("legal")


# (change, what the message must name)
BAD_CONFIGS = [
    (misspelt_key, ["sparsites"]),
    (unknown_method, ["methods.wanda.kind", "wando"]),
    (sparsity_above_one, ["sparsities.0", "1.5"]),
    (misspelt_method_option, ["methods.dpruner", "lamda"]),
    (misspelt_source_option, ["domains.legal.perplexity.source", "category"]),
    (underscore_in_domain_name, ["domains", "legal_eu"]),
]


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert domain_config(config, "general") is config["general"]


def test_readme_domain_example_is_valid():
    text = (REPO / "config" / "README.md").read_text()
    block = text.split("## Adding a domain")[1].split("```yaml\n")[1].split("```")[0]
    config = default_config()
    config["domains"].update(yaml.safe_load(block))
    validate_config(config)


@pytest.mark.parametrize(("change", "named"), BAD_CONFIGS, ids=[c.__name__ for c, _ in BAD_CONFIGS])
def test_package_validation_names_the_problem(change, named):
    config = copy.deepcopy(default_config())
    change(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="bad.yaml")
    for text in ["bad.yaml", *named]:
        assert text in str(error.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (misspelt_key, ["sparsites"]),
        (unknown_method, ["wando", "'methods']['wanda']['kind'"]),
        (sparsity_above_one, ["1.5", "'sparsities'][0]"]),
    ],
    ids=["misspelt_key", "unknown_method", "sparsity_above_one"],
)
def test_workflow_validation_names_the_problem(tmp_path, change, named):
    config = default_config()
    change(config)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path)]
        + ["-n", "--configfile", str(config_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Error validating config file" in output
    for text in named:
        assert text in output
