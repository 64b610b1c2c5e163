"""Config validation: the shipped configs pass; a bad key or value fails with a message naming it,
both in the package (dpruner.config) and in the workflow (Snakefile): the file, the key path and
the value in a few lines, without a dump of the schema."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpruner.config import (
    catalogue_domains,
    domain_config,
    expand_tasks,
    load_catalogue,
    load_config,
    read_yaml,
    validate_config,
)
from dpruner.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def default_config() -> dict:
    """config/config.yaml as the workflow sees it: its `{use: NAME}` tasks expanded."""
    return expand_tasks(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


def misspelt_key(config):
    config["sparsites"] = config.pop("sparsities")


def unknown_method(config):
    config["methods"]["wanda"]["kind"] = "wando"


def sparsity_above_one(config):
    config["sparsities"] = [1.5]


def sparsity_below_its_bound(config):
    # Its exact decimal would make file names too long long before 1e-300.
    config["sparsities"] = [1e-10]


def misspelt_method_option(config):
    config["methods"]["dpruner"]["lamda"] = config["methods"]["dpruner"].pop("lambda")


def misspelt_source_option(config):
    config["domains"]["legal"]["perplexity"]["source"]["category"] = ["Commercial"]


def underscore_in_domain_name(config):
    config["domains"]["legal_eu"] = config["domains"].pop("legal")


def domain_share_without_mixing(config):
    config["methods"]["wanda"]["domain_share"] = 0.3


def reconstructing_the_general_only_ablation(config):
    config["methods"]["dpruner"].update(scores="general", reconstruct="domain")


# (change, what the message must name)
BAD_CONFIGS = [
    (misspelt_key, ["sparsites"]),
    (unknown_method, ["methods.wanda.kind", "wando"]),
    (sparsity_above_one, ["sparsities.0", "1.5"]),
    (sparsity_below_its_bound, ["sparsities.0", "1e-10 is less than the minimum of 1e-09"]),
    (misspelt_method_option, ["methods.dpruner", "lamda"]),
    (misspelt_source_option, ["domains.legal.perplexity.source", "category"]),
    (underscore_in_domain_name, ["domains", "legal_eu"]),
    (domain_share_without_mixing, ["methods.wanda.calibration", "\"general\" expected 'mixed'"]),
    (reconstructing_the_general_only_ablation, ["methods.dpruner.scores", "expected 'domain'"]),
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


def test_readme_methods_beyond_the_paper_example_is_valid():
    text = (REPO / "config" / "README.md").read_text()
    block = text.split("### Methods beyond the paper")[1].split("```yaml\n")[1].split("```")[0]
    config = default_config()
    # The example copies the default config's `dpruner` entry through a YAML anchor.
    anchor = f"dpruner-entry: &dpruner {json.dumps(config['methods']['dpruner'])}\n"
    methods = yaml.safe_load(anchor + block)["methods"]
    assert {"sparsegpt-mixed", "wanda-mixed", "dpruner-rec"} <= set(methods)
    config["methods"].update(methods)
    validate_config(config)


@pytest.mark.parametrize(("change", "named"), BAD_CONFIGS, ids=[c.__name__ for c, _ in BAD_CONFIGS])
def test_package_validation_names_the_problem(change, named):
    config = copy.deepcopy(default_config())
    change(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="bad.yaml")
    for text in ["bad.yaml", *named]:
        assert text in str(error.value)


def snakemake_dry_run(workdir: Path, *args) -> str:
    result = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
        + ["-n", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (misspelt_key, ["sparsites", "unknown key"]),
        (unknown_method, ["methods.wanda.kind", '"wando"', "expected one of"]),
        (sparsity_above_one, ["sparsities.0", "1.5"]),
    ],
    ids=["misspelt_key", "unknown_method", "sparsity_above_one"],
)
def test_workflow_validation_names_the_problem(tmp_path, change, named):
    config = default_config()
    change(config)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output = snakemake_dry_run(tmp_path, "--configfile", config_file)
    for text in [f"error: {config_file} is invalid", *named]:
        assert text in output
    # The failing keys only: no dump of the schema or of the config.
    assert len(output.strip().splitlines()) <= 5, output
    assert "$defs" not in output and "additionalProperties" not in output


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "config" / "config.yaml"
    bad.parent.mkdir()
    bad.write_text("results: r\nseed: [0\nmodels: {}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3:7: invalid YAML"):
        read_yaml(bad)
    # The workflow's default config (`snakemake` with no --configfile) reports the same line.
    output = snakemake_dry_run(tmp_path)
    assert "config/config.yaml:3:7: invalid YAML" in output
    assert len(output.strip().splitlines()) <= 3, output


def test_a_catalogue_task_is_expanded_with_its_overrides(tmp_path):
    config = default_config()
    config["general"]["tasks"] = [{"use": "piqa", "limit": 7}, {"use": "piqa", "name": "piqa2"}]
    config["domains"]["legal"]["tasks"].append({"use": "mmlu_law", "holdout": True})
    config["domains"]["legal"]["tasks"][0] = {**load_catalogue()["licences_cloze"], "limit": 9}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    catalogue = load_catalogue()
    first, second = loaded["general"]["tasks"]
    assert first == {**catalogue["piqa"], "use": "piqa", "limit": 7}
    assert first["name"] == "piqa" and first["source"] == {"corpus": "piqa"}
    assert second["name"] == "piqa2" and "limit" not in second
    law = loaded["domains"]["legal"]["tasks"][-1]
    assert law["holdout"] is True and law["source"]["subjects"][0] == "professional_law"
    # Full definitions: a task without `use` is left as it is, and no two tasks share a dict.
    assert loaded["domains"]["legal"]["tasks"][0] == config["domains"]["legal"]["tasks"][0]
    first["source"]["corpus"] = "changed"
    assert second["source"] == {"corpus": "piqa"} and load_catalogue() == catalogue


def test_an_unknown_catalogue_task_is_one_line_naming_the_key(tmp_path):
    config = default_config()
    config["domains"]["medical"]["tasks"].append({"use": "medmcq", "limit": 200})
    with pytest.raises(ConfigError) as error:
        expand_tasks(config, source="bad.yaml")
    message = str(error.value)
    assert message.startswith("bad.yaml: domains.medical.tasks.2.use: unknown task 'medmcq'; ")
    assert "medmcqa" in message and "\n" not in message
    # The workflow stops with the same line, before the schema check.
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output = snakemake_dry_run(tmp_path, "--configfile", config_file)
    assert f"{config_file}: domains.medical.tasks.2.use: unknown task 'medmcq'" in output
    assert len(output.strip().splitlines()) <= 3, output


def test_a_key_written_twice_names_file_line_and_key(tmp_path):
    # PyYAML keeps the last value without a word; nested keys and flow mappings alike.
    text = (REPO / "config" / "config.yaml").read_text()
    text = text.replace("  nsamples: 16\n", "  nsamples: 16\n  nsamples: 32\n", 1)
    line = text.splitlines().index("  nsamples: 32") + 1
    config_file = tmp_path / "twice.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(config_file)
    message = f"{config_file}:{line}:3: invalid YAML: duplicate key 'nsamples' (first on line "
    assert str(error.value).startswith(message)
    flow = tmp_path / "flow.yaml"
    flow.write_text("a: {b: [1, {c: 1, c: 2}]}\n")
    with pytest.raises(ConfigError, match=r"flow\.yaml:1:19: .*duplicate key 'c'"):
        read_yaml(flow)
    # Keys a merge brings in may be overridden (config/README.md's `<<: *dpruner` example).
    merged = tmp_path / "merged.yaml"
    merged.write_text("a: &a {b: 1, c: 2}\nd: {<<: *a, c: 3}\n")
    assert read_yaml(merged)["d"] == {"b": 1, "c": 3}
    # The task catalogue is read the same way.
    catalogue = tmp_path / "tasks.yaml"
    piqa = json.dumps(load_catalogue()["piqa"])
    catalogue.write_text(f"general:\n  piqa: {piqa}\n  piqa: {piqa}\n")
    with pytest.raises(ConfigError, match=r"tasks\.yaml:3:3: .*duplicate key 'piqa'"):
        catalogue_domains(catalogue)
    # The workflow reads a --configfile with the same reader (Snakemake's keeps the last value).
    output = snakemake_dry_run(tmp_path, "--configfile", config_file)
    assert f"error: {message}" in output
    assert len(output.strip().splitlines()) <= 3, output


def test_two_tasks_of_one_domain_with_one_name_are_an_error(tmp_path):
    # Their results would be one: the evaluation keys them by name.
    config = default_config()
    config["domains"]["legal"]["tasks"].append({"use": "multilexsum", "limit": 20})
    config["general"]["tasks"].append({"use": "piqa", "name": "piqa-all"})
    with pytest.raises(ConfigError) as error:
        validate_config(expand_tasks(config), source="bad.yaml")
    assert str(error.value) == (
        "bad.yaml is invalid:\n  domains.legal.tasks.3.name: 'multilexsum' is also the name of "
        "task 2; give each task of a domain its own name (`name:` renames a catalogue task)"
    )
    # The workflow stops on it when it plans (config/config.yaml as written, with `use:`).
    text = (REPO / "config" / "config.yaml").read_text()
    config_file = tmp_path / "twice.yaml"
    config_file.write_text(text.replace("- {use: legal_support}", "- {use: licences_cloze}"))
    output = snakemake_dry_run(tmp_path, "--configfile", config_file)
    assert "domains.legal.tasks.1.name: 'licences_cloze' is also the name of task 0" in output


def test_sparsity_tokens_are_exact_decimals():
    from dpruner.config import sparsity_token
    from dpruner.masks import SparsitySpec

    # Distinct sparsities never share a file name; 1e-05 matches the wildcard `0\.[0-9]+`.
    assert [sparsity_token(s) for s in (0.5, 0.5000001, 1e-05, 0.25)] == [
        "0.5",
        "0.5000001",
        "0.00001",
        "0.25",
    ]
    # A job runs at exactly the configured sparsity, so 1:3's N:M check accepts its token.
    assert float(sparsity_token(1 / 3)) == 1 / 3
    SparsitySpec.parse(float(sparsity_token(1 / 3)), "1:3")
