"""docs/adding-a-method.md's example, as written there: a method that is one module, its schema
entry and a config line runs through the plan, the prune step and the report's tables with no
other edit, and through the tiny Snakemake workflow in a copy of the repository."""

import json
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cli import model_dir  # noqa: F401 (a fixture)
from test_docs import committed_files
from test_report import flat, write
from test_workflow import run_tiny, tiny_config, tiny_model_dir, write_config

from dpruner import config as config_module
from dpruner import methods, plan
from dpruner.cli import main
from dpruner.config import load_config
from dpruner.report.aggregate import aggregate
from dpruner.specs import aggregate_spec, prune_spec

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "adding-a-method.md"
VARIANT = "random_none_s0.5_unstructured"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def add_schema_entry(schema_file: Path) -> None:
    """The doc's schema entry: its `$defs`, `random` in the kinds' enum, the kind's keys."""
    defs, case, _ = (yaml.safe_load(block) for block in doc_blocks("yaml"))
    schema = yaml.safe_load(schema_file.read_text())
    schema["$defs"] |= defs
    schema["$defs"]["method"]["properties"]["kind"]["enum"].append("random")
    schema["$defs"]["method"]["allOf"].append(case)
    schema_file.write_text(yaml.safe_dump(schema))


@pytest.fixture
def random_method(tmp_path, monkeypatch):
    """The doc's module in a package of its own (found by the registry's discovery, not dropped
    into dpruner/methods/) and the doc's schema entry in a copy of the schema."""
    package = tmp_path / "extra_methods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "random.py").write_text(doc_blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    found = methods.discover("extra_methods")
    assert list(found) == ["random"]
    monkeypatch.setitem(methods.PRUNERS, "random", found["random"])
    path = tmp_path / "config.schema.yaml"
    path.write_text(config_module.SCHEMA.read_text())
    add_schema_entry(path)
    monkeypatch.setattr(config_module, "SCHEMA", path)
    config_module._schema.cache_clear()
    yield
    config_module._schema.cache_clear()
    sys.modules.pop("extra_methods.random", None)
    sys.modules.pop("extra_methods", None)


def test_a_method_from_the_doc_runs_through_plan_prune_and_tables(
    random_method,
    tmp_path,
    model_dir,  # noqa: F811
    capsys,
):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["methods"] = {
        "magnitude": {"kind": "magnitude"},
        **yaml.safe_load(doc_blocks("yaml")[2]),
    }
    config["sparsities"], config["patterns"] = [0.5], ["unstructured"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    config = load_config(path)
    options = config["methods"]["random"]
    assert plan.method_options(options) == {"mask_seed": 1}
    assert not plan.calibrates(options) and not plan.uses_hessians(options)
    assert VARIANT in plan.variants(config)
    assert set(plan.prune_inputs(config, "m", "random", "none", "0.5")) == {"model"}
    # The prune job's spec as the rule passes it (dpruner.specs.prune_spec), and the same job
    # from the flags a person types.
    spec = prune_spec(config, "smollm2-135m", "random", "none", "0.5", "unstructured", 0)
    command = ["prune", "--model", str(model_dir), "--method", "random", "--sparsity", "0.5"]
    for argv in (
        ["prune", "--model", str(model_dir), "--spec", spec.to_json()],
        [*command, "--mask-seed", "1"],
    ):
        out = tmp_path / VARIANT
        assert main([*argv, "--out", str(out), "--overwrite"]) == 0
        report = json.loads((out / "prune.json").read_text())
        assert (report["method"], report["options"]) == ("random", {"mask_seed": 1})
        assert report["sparsity_linear"] == pytest.approx(0.5, abs=0.01)
    # The flag is the kind's own, checked against its schema entry.
    other = ["prune", "--model", str(model_dir), "--method", "magnitude", "--sparsity", "0.5"]
    assert main([*other, "--mask-seed", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--mask-seed is an option of --method random" in capsys.readouterr().err
    assert main([*command, "--mask-seed", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--mask-seed: -1 is less than the minimum of 0" in capsys.readouterr().err
    # The report finds the method in the pruned model's id: one more row of the tables.
    files = [
        write(tmp_path, variant, domain, flat(ppl, 20.0, 0.3))
        for variant, ppl in (
            ("dense", 10.0),
            (VARIANT, 90.0),
            ("magnitude_none_s0.5_unstructured", 40.0),
        )
        for domain in ("medical", "legal", "general")
    ]
    tables = tmp_path / "tables"
    aggregate(files, tables, spec=aggregate_spec(config))
    assert "random" in (tables / "main.csv").read_text()


@pytest.mark.slow
def test_a_method_from_the_doc_runs_in_the_tiny_workflow_and_reaches_the_tables(tmp_path):
    """The one-file path for real: the doc's module written into a copy of the repository's
    `dpruner/methods/` and its schema entry into the copy's schema, nothing else edited, and
    Snakemake run from the copy, whose job processes import the copy's package."""
    repo = tmp_path / "repo"
    for name in committed_files():
        if not (REPO / name).is_file():
            continue  # deleted in the work tree, not yet in a commit
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    (repo / "dpruner" / "methods" / "random.py").write_text(doc_blocks("python")[0])
    add_schema_entry(repo / config_module.SCHEMA.relative_to(REPO))
    config = tiny_config(tiny_model_dir(tmp_path))
    config["methods"] = yaml.safe_load(doc_blocks("yaml")[2])
    # One domain and the multiple-choice tasks only: the run stays short.
    del config["domains"]["legal"]
    config["domains"]["medical"]["tasks"] = config["domains"]["medical"]["tasks"][:1]
    workdir = tmp_path / "work"
    run_tiny(
        write_config(tmp_path / "tiny.yaml", config),
        workdir,
        repo=repo,
        env={"PYTHONPATH": str(repo)},
    )
    results = workdir / "results"
    report = json.loads(
        (results / "models" / "tiny" / "pruned" / VARIANT / "prune.json").read_text()
    )
    assert (report["method"], report["options"]) == ("random", {"mask_seed": 1})
    assert report["sparsity_linear"] == pytest.approx(0.5, abs=0.01)
    # Its metrics from the real evaluation, in the main table and the leaderboard.
    main_table = pd.read_csv(results / "tables" / "main.csv").set_index("method")
    leaderboard = pd.read_csv(results / "tables" / "leaderboard.csv")
    assert set(leaderboard["method"]) == {"random"}
    for domain in ("general", "medical"):
        pruned, dense = (
            json.loads((results / "metrics" / "tiny" / variant / f"{domain}.json").read_text())
            for variant in (VARIANT, "dense")
        )
        ppl = pruned["perplexity"]["domain"]["ppl"]
        assert ppl != dense["perplexity"]["domain"]["ppl"]
        assert pruned["tasks"][f"{domain}_mc"]["metrics"]
        assert main_table.loc["random", f"{domain}: PPL"] == pytest.approx(ppl, abs=1e-3)
        ranked = leaderboard.query("domain == @domain and task == 'perplexity'")
        assert ranked["value"].tolist() == [pytest.approx(ppl, abs=1e-3)]
    assert "random" in (results / "summary.md").read_text()
    shutil.rmtree(results / "models")  # the largest files; tmp_path is kept a while
