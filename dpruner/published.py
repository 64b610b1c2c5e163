"""Committed results against a run: does a run reproduce them, and publish a run's results.

A run writes under its `results:` folder (default `results/run/`, not committed); the committed
copies of its tables, plots and summary live in `results/`. Snakemake never sees the committed
copies as outputs, so a fresh clone's `make run` computes every job. The comparison covers the
result tables (CSV); timings and machine lines differ from run to run and are not compared.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dpruner.errors import DprunerError
from dpruner.io import OutputError, atomic_output, mark_results_folder, results_folder_problem

# Result tables a run is compared on (same config, same package versions).
RESULT_TABLES = (
    "main.csv",
    "main_change.csv",
    "cross_domain.csv",
    "metrics_long.csv",
    "counts.csv",
)
# What `publish` copies from a run folder: these folders' files and the summary page.
PUBLISHED = ("tables", "plots")
SUMMARY = "summary.md"
# Relative difference that float summation order alone explains. The same machine and thread
# count give the same bits; on another x86-64 CPU (issue 20: an Intel Xeon against the committed
# run) dense and magnitude values, whose computation selects nothing, moved by up to 2e-5 (the
# tables keep 6 significant digits, 5e-6 relative); 1e-4 leaves 5 times that. Calibrated
# methods move far more (SparseGPT perplexity 2.8 %) because a near-tie flips a mask entry,
# which then changes what the model computes: those differences are measured against the
# value's interval instead.
FLOAT_TOLERANCE = 1e-4


class TableComparison(NamedTuple):
    """One result table against its committed copy: the line to print, and whether every
    value lies within float tolerance or within its interval's half-width of the committed one."""

    line: str
    within_intervals: bool


def compare_tables(run_tables: str | Path, committed_tables: str | Path) -> list[TableComparison]:
    """One comparison per result table: bit-identical, within float-order tolerance, or different
    (the largest difference in half-widths of the committed value's 95 % interval, and where).
    An empty run folder is an error."""
    run_tables, committed_tables = Path(run_tables), Path(committed_tables)
    if not (run_tables / "main.csv").is_file():
        raise DprunerError(f"{run_tables}: no main.csv; run the benchmark first (make run)")
    half_widths = _half_widths(committed_tables / "metrics_long.csv")
    comparisons = []
    for name in RESULT_TABLES:
        ours, theirs = run_tables / name, committed_tables / name
        if not theirs.is_file():
            comparisons.append(TableComparison(f"{name}: not committed", True))
            continue
        if not ours.is_file():
            comparisons.append(TableComparison(f"{name}: missing from the run", False))
            continue
        line, within = _difference(pd.read_csv(ours), pd.read_csv(theirs), half_widths.get(name))
        comparisons.append(TableComparison(f"{name}: {line}", within))
    return comparisons


def _half_widths(metrics_long: Path) -> dict[str, pd.DataFrame]:
    """Tables shaped like the result tables holding each value's interval half-width (a change's
    for paired changes), from the committed metrics_long.csv; empty when there is none."""
    from dpruner.report.formatting import csv_frame
    from dpruner.report.tables import cross_domain_table, main_table

    if not metrics_long.is_file():
        return {}
    long = pd.read_csv(metrics_long)
    long["half"] = (long["high"] - long["low"]) / 2
    long["change_half"] = (long["change_high"] - long["change_low"]) / 2
    per_column = {"value": "half", "low": "half", "high": "half", "change": "change_half"}
    per_column.update(change_low="change_half", change_high="change_half")
    widths = long.drop(columns=["half", "change_half"])
    for column in widths.select_dtypes("number").columns:
        widths[column] = long[per_column[column]] if column in per_column else np.nan
    return {
        "main.csv": csv_frame(main_table(long, "half")),
        "main_change.csv": csv_frame(main_table(long, "change_half")),
        "cross_domain.csv": csv_frame(cross_domain_table(long, "half")),
        "metrics_long.csv": widths,
    }


def _difference(
    run: pd.DataFrame, committed: pd.DataFrame, half_widths: pd.DataFrame | None
) -> tuple[str, bool]:
    if list(run.columns) != list(committed.columns):
        return (
            f"columns differ: run {list(run.columns)} vs committed {list(committed.columns)}",
            False,
        )
    if run.shape != committed.shape:
        return f"shape differs: run {run.shape} vs committed {committed.shape}", False
    numeric = run.select_dtypes("number").columns
    # Significance verdicts follow the values: reported, judged through the values.
    verdicts = [c for c in run.columns if c == "significant"]
    text = [c for c in run.columns if c not in numeric and c not in verdicts]
    if not run[text].astype(str).equals(committed[text].astype(str)):
        return "labels differ", False
    a, b = run[numeric].to_numpy(float), committed[numeric].to_numpy(float)
    half = np.full_like(b, np.nan)
    # Cell by cell only where the interval tables line up with the committed one.
    if (
        half_widths is not None
        and half_widths.shape == committed.shape
        and half_widths[text].astype(str).equals(committed[text].astype(str))
    ):
        half = half_widths[numeric].to_numpy(float)
    identical = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(identical, 0.0, np.abs(a - b) / (np.abs(b) + (b == 0)))
        in_half_widths = np.where(half > 0, np.abs(a - b) / half, np.nan)
    # A value against inf or nan differs without a finite size.
    relative = np.nan_to_num(relative, nan=np.inf)
    within = ~identical & (relative <= FLOAT_TOLERANCE)
    different = ~identical & ~within
    counts = f"{int(within.sum())} within float tolerance, {int(identical.sum())} bit-identical"
    flips = sum(int((run[c].astype(str) != committed[c].astype(str)).sum()) for c in verdicts)
    counts += f"; {flips} significance verdict(s) differ" if flips else ""
    if not different.any():
        if not within.any():
            return "bit-identical", True
        return (
            f"within float tolerance (relative {FLOAT_TOLERANCE:.0e}): largest difference "
            f"{relative.max():.2g} (relative); {counts}",
            True,
        )

    def where(scores: np.ndarray) -> str:
        row, column = divmod(int(np.nanargmax(scores)), scores.shape[1])
        return (
            f"row {row}, column '{numeric[column]}': "
            f"run {a[row, column]:.6g} vs committed {b[row, column]:.6g}"
        )

    measured = different & np.isfinite(in_half_widths)
    unmeasured = different & ~measured
    parts = [f"different: {int(different.sum())} value(s) beyond float tolerance"]
    if measured.any():
        largest = np.where(measured, in_half_widths, -1.0)
        parts.append(f"largest {largest.max():.2g} interval half-widths ({where(largest)})")
    if unmeasured.any():
        largest = np.where(unmeasured, relative, -1.0)
        parts.append(
            f"{int(unmeasured.sum())} without an interval, largest by {largest.max():.3g} "
            f"(relative; {where(largest)})"
        )
    beyond = unmeasured.any() or (measured.any() and in_half_widths[measured].max() > 1)
    return f"{', '.join(parts)}; {counts}", not beyond


def publish(run_dir: str | Path, to_dir: str | Path) -> list[Path]:
    """Copy a finished run's tables, plots and summary into `to_dir` (the committed copies): a new
    or empty folder, or a results folder (dpruner.io), which it then is."""
    run_dir, to_dir = Path(run_dir), Path(to_dir)
    if not (run_dir / SUMMARY).is_file():
        raise DprunerError(f"{run_dir}: no {SUMMARY}; only a finished run can be published")
    if run_dir.resolve() == to_dir.resolve():
        raise DprunerError("--run and --to are the same folder")
    problem = results_folder_problem(to_dir)
    if problem:
        raise OutputError(f"--to {to_dir} {problem}")
    mark_results_folder(to_dir)
    written = []
    for folder in PUBLISHED:
        for source in sorted((run_dir / folder).glob("*")):
            if source.is_file():
                target = to_dir / folder / source.name
                with atomic_output(target) as tmp:
                    shutil.copyfile(source, tmp)
                written.append(target)
    with atomic_output(to_dir / SUMMARY) as tmp:
        shutil.copyfile(run_dir / SUMMARY, tmp)
    return [*written, to_dir / SUMMARY]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare-results",
        help="does a run reproduce the committed result tables (bit for bit, within float "
        "tolerance, or within the values' intervals)?",
    )
    p.add_argument("--run", default="results/run", help="the run's results folder")
    p.add_argument("--committed", default="results", help="folder of the committed copies")
    p.set_defaults(func=_cmd_compare)

    p = subparsers.add_parser("publish", help="copy a run's tables, plots and summary")
    p.add_argument("--run", default="results/run", help="the run's results folder")
    p.add_argument("--to", default="results", help="folder of the committed copies")
    p.set_defaults(func=lambda a: {"published": [str(p) for p in publish(a.run, a.to)]})


def _cmd_compare(args) -> dict:
    comparisons = compare_tables(Path(args.run) / "tables", Path(args.committed) / "tables")
    for comparison in comparisons:
        print(comparison.line)
    if not all(comparison.within_intervals for comparison in comparisons):
        raise DprunerError(
            "the run differs from the committed result tables by more than float order and the "
            "values' intervals explain (above)"
        )
    return {
        "bit_identical": sum(c.line.endswith(": bit-identical") for c in comparisons),
        "tables": len(comparisons),
    }
