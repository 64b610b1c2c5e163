"""Committed results against a run: the comparison tells bit-identical values, differences of
float order and differences measured in the values' intervals apart; publish copies a finished
run's tables, plots and summary."""

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dpruner.cli import main
from dpruner.errors import DprunerError
from dpruner.published import FLOAT_TOLERANCE, RESULT_TABLES, compare_tables, publish

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


def lines(run_tables, committed_tables) -> dict[str, str]:
    return {
        c.line.split(": ", 1)[0]: c.line.split(": ", 1)[1]
        for c in compare_tables(run_tables, committed_tables)
    }


def test_a_run_reproduces_its_own_tables_and_a_changed_value_is_found(tmp_path, run):
    committed = tmp_path / "committed"
    publish(run, committed)
    assert list(lines(run / "tables", committed / "tables").values()) == ["bit-identical"] * len(
        RESULT_TABLES
    )
    # One cell changed by 1 %, whatever the committed run measured: measured in its interval.
    main_csv = committed / "tables" / "main.csv"
    table = pd.read_csv(main_csv)
    measured = table.loc[1, "general: PPL"]
    table.loc[1, "general: PPL"] = measured * 1.01
    table.to_csv(main_csv, index=False)
    long = pd.read_csv(committed / "tables" / "metrics_long.csv")
    row = long[(long["method"] == "magnitude") & (long["task"] == "perplexity")].iloc[0]
    half = (row["high"] - row["low"]) / 2
    line = lines(run / "tables", committed / "tables")["main.csv"]
    assert line.startswith("different: 1 value(s) beyond float tolerance")
    assert f"largest {measured * 0.01 / half:.2g} interval half-widths" in line
    assert f"run {measured:.6g} vs committed {measured * 1.01:.6g}" in line
    assert main(["compare-results", "--run", str(run), "--committed", str(committed)]) == 0
    assert main(["publish", "--run", str(run), "--to", str(committed)]) == 0
    assert main(["compare-results", "--run", str(run), "--committed", str(committed)]) == 0


def synthetic_long() -> pd.DataFrame:
    """A dense and a pruned model's perplexity with intervals (half-widths 1 and 2)."""
    key = dict(model="m", calibration="none", domain="general", task="perplexity", metric="ppl")
    return pd.DataFrame(
        [
            {**key, "variant": "dense", "method": "dense", "sparsity": 0, "pattern": "dense",
             "value": 10.0, "low": 9.0, "high": 11.0, "units": 8},
            {**key, "variant": "magnitude", "method": "magnitude", "sparsity": 0.5,
             "pattern": "unstructured", "value": 20.0, "low": 18.0, "high": 22.0, "units": 8,
             "change": 100.0, "change_low": 90.0, "change_high": 110.0, "significant": True},
        ]
    )  # fmt: skip


def write_tables(folder: Path, long: pd.DataFrame) -> Path:
    from dpruner.report.formatting import csv_frame
    from dpruner.report.tables import main_table

    tables = folder / "tables"
    tables.mkdir(parents=True)
    long.to_csv(tables / "metrics_long.csv", index=False)
    csv_frame(main_table(long)).to_csv(tables / "main.csv", index=False)
    return tables


@pytest.mark.parametrize(
    ("dense", "pruned", "units", "main_line", "long_line", "code"),
    [
        (10.0, 20.0, 8, "bit-identical", "bit-identical", 0),
        (10.0 * (1 + FLOAT_TOLERANCE / 2), 20.0, 8, "within float tolerance", None, 0),
        (10.0, 20.8, 8, "different: 1 value(s)", "largest 0.4 interval half-widths", 0),
        (10.0, 23.0, 8, "largest 1.5 interval half-widths", "largest 1.5", 2),
        (10.0, 20.0, 9, "bit-identical", "1 without an interval", 2),
    ],
    ids=["identical", "float order", "within interval", "beyond interval", "no interval"],
)
def test_three_classes_and_the_exit_code(
    tmp_path, dense, pruned, units, main_line, long_line, code
):
    committed = write_tables(tmp_path / "committed", synthetic_long())
    long = synthetic_long()
    long.loc[0, "value"], long.loc[1, "value"], long.loc[1, "units"] = dense, pruned, units
    run = write_tables(tmp_path / "run", long)
    found = lines(run, committed)
    assert found["main.csv"].startswith(main_line) or main_line in found["main.csv"]
    assert long_line is None or long_line in found["metrics_long.csv"]
    if dense != 10.0:
        assert found["main.csv"].endswith("1 within float tolerance, 3 bit-identical")
    args = ["compare-results", "--run", str(run.parent), "--committed", str(committed.parent)]
    assert main(args) == code


def test_only_a_finished_run_is_compared_or_published(tmp_path):
    with pytest.raises(DprunerError, match="run the benchmark first"):
        compare_tables(tmp_path / "tables", REPO / "results" / "tables")
    with pytest.raises(DprunerError, match="only a finished run"):
        publish(tmp_path, tmp_path / "to")
