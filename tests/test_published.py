"""Committed results against a run: the comparison finds a changed value and nothing else;
publish copies a finished run's tables, plots and summary."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dpruner.cli import main
from dpruner.errors import DprunerError
from dpruner.published import RESULT_TABLES, compare_tables, publish

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def run(tmp_path):
    """A finished run: the committed default-run tables and plots as its outputs."""
    run = tmp_path / "run"
    for name in ("tables", "plots"):
        shutil.copytree(REPO / "results" / name, run / name)
    (run / "tables" / "counts.csv").write_text("domain,task,items\nmedical,medical_section,30\n")
    (run / "summary.md").write_text("# Benchmark results\n")
    return run


def test_a_run_reproduces_its_own_tables_and_a_changed_value_is_found(tmp_path, run):
    committed = tmp_path / "committed"
    publish(run, committed)
    lines = compare_tables(run / "tables", committed / "tables")
    assert [line.split(": ", 1)[1] for line in lines] == ["same"] * len(RESULT_TABLES)
    # One cell changed by 1 %, whatever the committed run measured.
    main_csv = committed / "tables" / "main.csv"
    table = pd.read_csv(main_csv)
    measured = table.loc[1, "general: PPL"]
    table.loc[1, "general: PPL"] = measured * 1.01
    table.to_csv(main_csv, index=False)
    lines = compare_tables(run / "tables", committed / "tables")
    (line,) = [x for x in lines if x.startswith("main.csv")]
    assert "1 value(s) differ" in line
    assert f"run {measured:.6g} vs committed {measured * 1.01:.6g}" in line
    assert main(["compare-results", "--run", str(run), "--committed", str(committed)]) == 2
    assert main(["publish", "--run", str(run), "--to", str(committed)]) == 0
    assert main(["compare-results", "--run", str(run), "--committed", str(committed)]) == 0


def test_only_a_finished_run_is_compared_or_published(tmp_path):
    with pytest.raises(DprunerError, match="run the benchmark first"):
        compare_tables(tmp_path / "tables", REPO / "results" / "tables")
    with pytest.raises(DprunerError, match="only a finished run"):
        publish(tmp_path, tmp_path / "to")
