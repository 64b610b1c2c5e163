"""Wide tables from the long frame: the main comparison, the cross-domain table and their
interval tables (rows: models; columns: (domain, task, metric))."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from dpruner.intervals import GENERAL_PERPLEXITY, PERPLEXITY

# Column order within a domain.
METRIC_ORDER = ["ppl", "accuracy", "macro_f1", "rouge1", "rouge2", "rougeL"]
# In the cross-domain table each task shows one metric.
PRIMARY_METRICS = ("ppl", "accuracy", "rougeL")
ROW_KEYS = ["model", "method", "sparsity", "pattern"]


def column_order(columns: Iterable[tuple], domains: list[str]) -> list[tuple]:
    """(domain, task, metric) columns: domains in order, then perplexity, the tasks, and general
    perplexity last; within a task the metrics in METRIC_ORDER."""

    def key(column):
        domain, task, metric = column
        task_rank = {PERPLEXITY: 0, GENERAL_PERPLEXITY: 2}.get(task, 1)
        metric_rank = METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)
        return (domains.index(domain), task_rank, task, metric_rank, metric)

    return sorted(columns, key=key)


def domain_order(long: pd.DataFrame) -> list[str]:
    """`general` first, then the other domains in order of appearance."""
    seen = list(dict.fromkeys(long["domain"]))
    return sorted(seen, key=lambda domain: domain != "general")


def _rows_sorted(table: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """Models, methods and domains in order of appearance (dense first), then sparsity and
    pattern."""
    ranks = {
        level: {name: i for i, name in enumerate(dict.fromkeys(long[level]))}
        for level in ("model", "method")
    }
    ranks["method"]["dense"] = -1
    ranks["pruned_for"] = {domain: i for i, domain in enumerate(domain_order(long))}
    ranks["pruned_for"]["-"] = -1

    def key(level):
        return level.map(ranks[level.name]) if level.name in ranks else level

    return table.sort_index(key=key)


def main_table(long: pd.DataFrame, values: str = "value") -> pd.DataFrame:
    """Rows: dense and each method (x sparsity x pattern); columns: (domain, task, metric);
    cells: `values` (the value, or its interval bound or paired change: intervals.py).

    In domain D's columns a domain-calibrated method shows its model pruned for D; methods that
    share one model across domains (magnitude, general calibration) show that model everywhere.
    """
    shared = long["calibration"].isin(["none", "general"])
    own = long[
        (shared | (long["calibration"] == long["domain"])) & long["metric"].isin(METRIC_ORDER)
    ]
    return _pivot(own, ROW_KEYS, values, long)


def _pivot(rows: pd.DataFrame, index: list[str], values: str, long: pd.DataFrame) -> pd.DataFrame:
    """One column per (domain, task, metric) of `long`, in table order, even where `values` is
    missing throughout (an interval that could not be computed)."""
    cells = rows.groupby([*index, "domain", "task", "metric"], sort=False)[values].first()
    table = cells.unstack(["domain", "task", "metric"])
    table = table[column_order(table.columns, domain_order(long))]
    return _rows_sorted(table, long)


def interval_tables(long: pd.DataFrame, table=None) -> dict[str, pd.DataFrame]:
    """The tables of interval bounds and paired changes against dense, shaped like `table`
    (main_table by default)."""
    table = table or main_table
    columns = ["low", "high", "change", "change_low", "change_high", "significant"]
    return {column: table(long, column) for column in columns if column in long}


def cross_domain_table(long: pd.DataFrame, values: str = "value") -> pd.DataFrame:
    """Rows: the dense model and each model pruned for one domain (method, pruned_for, sparsity,
    pattern); columns: (evaluated domain, task, primary metric)."""
    specific = long[~long["calibration"].isin(["none", "general"]) | (long["method"] == "dense")]
    specific = specific[specific["metric"].isin(PRIMARY_METRICS)]
    specific = specific.assign(
        pruned_for=specific["calibration"].where(specific["method"] != "dense", "-")
    )
    return _pivot(specific, ["model", "method", "pruned_for", "sparsity", "pattern"], values, long)
