"""Committed results against a run: does a run reproduce them, and publish a run's results.

A run writes under its `results:` folder (default `results/run/`, not committed); the committed
copies of its tables, plots and summary live in `results/`. Snakemake never sees the committed
copies as outputs, so a fresh clone's `make run` computes every job. The comparison covers the
result tables (CSV); timings and machine lines differ from run to run and are not compared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from dpruner.errors import DprunerError
from dpruner.io import OutputError, atomic_output, mark_results_folder, results_folder_problem

# Result tables whose values a CPU run reproduces exactly (same config, same package versions).
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


def compare_tables(run_tables: str | Path, committed_tables: str | Path) -> list[str]:
    """One line per result table: `same`, or what differs (shape, columns, the largest relative
    difference and where). An empty run folder is an error."""
    run_tables, committed_tables = Path(run_tables), Path(committed_tables)
    if not (run_tables / "main.csv").is_file():
        raise DprunerError(f"{run_tables}: no main.csv; run the benchmark first (make run)")
    lines = []
    for name in RESULT_TABLES:
        ours, theirs = run_tables / name, committed_tables / name
        if not theirs.is_file():
            lines.append(f"{name}: not committed")
            continue
        if not ours.is_file():
            lines.append(f"{name}: missing from the run")
            continue
        lines.append(f"{name}: {_difference(pd.read_csv(ours), pd.read_csv(theirs))}")
    return lines


def _difference(run: pd.DataFrame, committed: pd.DataFrame) -> str:
    if list(run.columns) != list(committed.columns):
        return f"columns differ: run {list(run.columns)} vs committed {list(committed.columns)}"
    if run.shape != committed.shape:
        return f"shape differs: run {run.shape} vs committed {committed.shape}"
    numeric = run.select_dtypes("number").columns
    text = [c for c in run.columns if c not in numeric]
    if not run[text].astype(str).equals(committed[text].astype(str)):
        return "labels differ"
    a, b = run[numeric].to_numpy(float), committed[numeric].to_numpy(float)
    equal = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        relative = np.where(equal, 0.0, np.abs(a - b) / (np.abs(b) + (b == 0)))
    # A value against inf or nan differs without a finite size.
    relative = np.nan_to_num(relative, nan=np.inf)
    if (relative == 0).all():
        return "same"
    row, column = divmod(int(relative.argmax()), relative.shape[1])
    changed = int((relative > 0).sum())
    return (
        f"{changed} value(s) differ, largest by {relative.max():.3g} (relative) in row {row}, "
        f"column '{numeric[column]}': run {a[row, column]:.6g} vs committed {b[row, column]:.6g}"
    )


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
        "compare-results", help="does a run reproduce the committed result tables?"
    )
    p.add_argument("--run", default="results/run", help="the run's results folder")
    p.add_argument("--committed", default="results", help="folder of the committed copies")
    p.set_defaults(func=_cmd_compare)

    p = subparsers.add_parser("publish", help="copy a run's tables, plots and summary")
    p.add_argument("--run", default="results/run", help="the run's results folder")
    p.add_argument("--to", default="results", help="folder of the committed copies")
    p.set_defaults(func=lambda a: {"published": [str(p) for p in publish(a.run, a.to)]})


def _cmd_compare(args) -> dict:
    lines = compare_tables(Path(args.run) / "tables", Path(args.committed) / "tables")
    reproduced = all(line.endswith(": same") for line in lines)
    for line in lines:
        print(line)
    if not reproduced:
        raise DprunerError("the run does not reproduce the committed result tables (above)")
    return {"reproduced": True, "tables": len(lines)}
