"""Snakemake benchmark files: one row per job, and their sums per rule."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dpruner.errors import DprunerError
from dpruner.plan import BENCHMARKS


def read_benchmarks(benchmark_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per job: rule (the folder under `benchmarks/`, `dpruner.plan.BENCHMARKS`), job,
    seconds, peak RSS in MB."""
    rows = []
    for path in benchmark_files:
        path = Path(path)
        parts = path.parts
        if BENCHMARKS not in parts:
            raise DprunerError(f"{path}: a benchmark file must lie under a '{BENCHMARKS}' folder")
        below = parts[len(parts) - parts[::-1].index(BENCHMARKS) :]
        rule = below[0] if len(below) > 1 else Path(below[0]).stem
        frame = pd.read_csv(path, sep="\t")
        for _, record in frame.iterrows():
            rows.append(
                {
                    "rule": rule,
                    "job": str(Path(*below)).removesuffix(".tsv"),
                    "seconds": float(record["s"]),
                    "max_rss_mb": pd.to_numeric(record.get("max_rss"), errors="coerce"),
                    "cpu_time_s": pd.to_numeric(record.get("cpu_time"), errors="coerce"),
                }
            )
    return pd.DataFrame(rows, columns=["rule", "job", "seconds", "max_rss_mb", "cpu_time_s"])


def benchmarks_by_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    summary = jobs.groupby("rule", sort=False).agg(
        jobs=("job", "count"),
        total_s=("seconds", "sum"),
        mean_s=("seconds", "mean"),
        max_s=("seconds", "max"),
        max_rss_mb=("max_rss_mb", "max"),
    )
    total = pd.DataFrame(
        {
            "jobs": [summary["jobs"].sum()],
            "total_s": [summary["total_s"].sum()],
            "mean_s": [float("nan")],
            "max_s": [summary["max_s"].max() if len(summary) else float("nan")],
            "max_rss_mb": [summary["max_rss_mb"].max() if len(summary) else float("nan")],
        },
        index=pd.Index(["all (sum of job times)"], name="rule"),
    )
    return pd.concat([summary, total]).round(1).reset_index()
