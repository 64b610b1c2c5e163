"""Figures (matplotlib) of the main table and the benchmarks, and the `plot` step."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dpruner.config import sparsity_token
from dpruner.intervals import GENERAL_PERPLEXITY, PERPLEXITY
from dpruner.io import atomic_output
from dpruner.report.formatting import METRIC_LABELS, PERCENT_METRICS
from dpruner.report.tables import interval_tables, main_table


def _row_labels(index: pd.MultiIndex) -> list[str]:
    """Method names, with model, pattern and sparsity only where several occur."""
    rows = index.to_frame(index=False)
    pruned = rows[rows["method"] != "dense"]
    with_model = rows["model"].nunique() > 1
    with_setting = len(pruned[["sparsity", "pattern"]].drop_duplicates()) > 1
    labels = []
    for model, method, sparsity, pattern in index:
        label = method
        if with_setting and method != "dense":
            label += f" ({pattern}, {sparsity_token(sparsity)})"
        labels.append(f"{model}: {label}" if with_model else label)
    return labels


def _scale_axis(axis, values: pd.Series, which: str = "y") -> None:
    """Log scale for perplexities spanning more than 20x (pruned models can explode), with plain
    numbers as tick labels."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    positive = values.dropna()
    positive = positive[positive > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        getattr(axis, f"set_{which}scale")("log")
        scale_axis = getattr(axis, f"{which}axis")
        scale_axis.set_major_formatter(ScalarFormatter())
        scale_axis.set_minor_formatter(NullFormatter())


def _save_figure(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_output(path) as tmp:
        # Fixed metadata: the same numbers give the same bytes, so reruns leave git diffs quiet.
        figure.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(figure)
    return path


def _panel_title(column: tuple) -> str:
    _, task, metric = column
    if task in (PERPLEXITY, GENERAL_PERPLEXITY):
        return f"{task} (lower is better)"
    return f"{task}: {METRIC_LABELS.get(metric, metric)} %"


def _panel_values(table: pd.DataFrame, column: tuple) -> pd.Series:
    values = table[column]
    return values * 100 if column[2] in PERCENT_METRICS else values


def _grid(count: int):
    import matplotlib.pyplot as plt

    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.set_visible(False)
    return figure, list(axes.flat[:count])


def _error_bars(table, bounds, column) -> list[list[float]] | None:
    """matplotlib's yerr (distances below and above each value) from the interval tables."""
    if not bounds or "low" not in bounds:
        return None
    values = _panel_values(table, column)
    low = _panel_values(bounds["low"], column).astype(float)
    high = _panel_values(bounds["high"], column).astype(float)
    return [(values - low).fillna(0).clip(lower=0).tolist(), (high - values).fillna(0).tolist()]


def bar_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """One panel per metric of `domain`, one bar per row of the main table, with its interval
    as an error bar."""
    columns = [c for c in table.columns if c[0] == domain]
    figure, axes = _grid(len(columns))
    labels = _row_labels(table.index)
    colours = [f"C{i}" for i in range(len(labels))]
    for axis, column in zip(axes, columns, strict=True):
        values = _panel_values(table, column).astype(float)
        axis.bar(
            range(len(labels)),
            values.fillna(0),
            color=colours,
            yerr=_error_bars(table, bounds, column),
            capsize=3,
            error_kw={"lw": 1},
        )
        axis.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        if column[2] == "ppl":
            _scale_axis(axis, values)
        axis.set_title(_panel_title(column), fontsize=9)
    figure.suptitle(f"{domain}: every method", fontsize=11)
    figure.tight_layout()
    return figure


def sparsity_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """Each metric of `domain` against sparsity, one line per method (unstructured rows), with
    its interval as a band."""
    columns = [c for c in table.columns if c[0] == domain]
    figure, axes = _grid(len(columns))
    rows = table.reset_index()
    # Interval bounds by row position, as `rows` numbers them.
    bands = {n: bounds[n].reset_index(drop=True) for n in ("low", "high") if n in (bounds or {})}
    curves = rows[rows["pattern"] == "unstructured"]
    dense = rows[rows["method"] == "dense"]
    for axis, column in zip(axes, columns, strict=True):
        scale = 100 if column[2] in PERCENT_METRICS else 1
        for (model, method), points in curves.groupby(["model", "method"], sort=False):
            points = points.sort_values("sparsity")
            label = method if rows["model"].nunique() == 1 else f"{model}: {method}"
            line = axis.plot(points["sparsity"], points[column] * scale, marker="o", label=label)
            if bands:
                axis.fill_between(
                    points["sparsity"],
                    bands["low"].loc[points.index, column].astype(float) * scale,
                    bands["high"].loc[points.index, column].astype(float) * scale,
                    color=line[0].get_color(),
                    alpha=0.15,
                )
        for _, reference in dense.iterrows():
            axis.axhline(reference[column] * scale, color="k", ls="--", lw=1)
        if column[2] == "ppl":
            _scale_axis(axis, table[column])
        axis.set_xlabel("sparsity")
        axis.set_title(_panel_title(column), fontsize=9)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{domain}: metric vs sparsity", fontsize=11)
    figure.tight_layout()
    return figure


def calibration_size_figure(table: pd.DataFrame, sizes: dict[str, int], bounds: dict | None = None):
    """Each metric against the calibration size, for domains that differ only in it (`sizes`,
    {domain: instances}, config.calibration_size_series): one line per pruned model, its
    interval as a band, the dense model as a dashed line."""
    domains = [d for d in sizes if any(c[0] == d for c in table.columns)]
    panels = [
        c[1:]
        for c in table.columns
        if c[0] == domains[0] and all((d, *c[1:]) in table.columns for d in domains)
    ]
    figure, axes = _grid(len(panels))
    labels = dict(zip(table.index, _row_labels(table.index), strict=True))
    x = [sizes[d] for d in domains]
    for axis, (task, metric) in zip(axes, panels, strict=True):
        columns = [(d, task, metric) for d in domains]
        scale = 100 if metric in PERCENT_METRICS else 1
        for row in table.index:
            values = table.loc[row, columns].astype(float).to_numpy() * scale
            if row[1] == "dense":
                axis.axhline(values[0], color="k", ls="--", lw=1, label=labels[row])
                continue
            line = axis.plot(x, values, marker="o", label=labels[row])
            if bounds and "low" in bounds:
                low, high = (
                    bounds[k].loc[row, columns].astype(float) * scale for k in ("low", "high")
                )
                axis.fill_between(x, low, high, color=line[0].get_color(), alpha=0.15)
        if metric == "ppl":
            _scale_axis(axis, pd.Series(table[columns].to_numpy(float).ravel()))
        axis.set_xscale("log", base=2)
        axis.set_xticks(x, [str(n) for n in x])
        axis.set_xlabel("calibration instances")
        axis.set_title(_panel_title((None, task, metric)), fontsize=9)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{', '.join(domains)}: metric vs calibration size", fontsize=11)
    figure.tight_layout()
    return figure


def pareto_optimal(points: list[tuple[float, float]]) -> list[bool]:
    """For (x, y) points where lower is better on both axes: True where no other point is at
    least as good on both and better on one."""
    return [
        not any(
            (u <= x and v <= y) and (u < x or v < y) for j, (u, v) in enumerate(points) if j != i
        )
        for i, (x, y) in enumerate(points)
    ]


def frontier_figure(table: pd.DataFrame, domain: str, bounds: dict | None = None):
    """The paper's two-sided claim in one picture: general perplexity (x) against `domain`
    perplexity (y) of every model in the domain's columns, with their intervals; the
    Pareto-optimal pruned models (no other pruned model is better on both) are ringed and named
    in bold; the dense model is the reference (a star), not a competitor."""
    import matplotlib.pyplot as plt

    x_column, y_column = (domain, GENERAL_PERPLEXITY, "ppl"), (domain, PERPLEXITY, "ppl")
    rows = table[[x_column, y_column]].astype(float).dropna()
    labels = _row_labels(rows.index)
    points = list(zip(rows[x_column], rows[y_column], strict=True))
    dense = list(rows.index.get_level_values("method") == "dense")
    pruned = [p for p, is_dense in zip(points, dense, strict=True) if not is_dense]
    front = iter(pareto_optimal(pruned))
    optimal = [False if is_dense else next(front) for is_dense in dense]
    figure, axis = plt.subplots(figsize=(6.4, 4.8))
    for i, ((x, y), label, best) in enumerate(zip(points, labels, optimal, strict=True)):
        error = {}
        if bounds and "low" in bounds:
            row = rows.index[i]
            low_x, high_x = (float(bounds[k].at[row, x_column]) for k in ("low", "high"))
            low_y, high_y = (float(bounds[k].at[row, y_column]) for k in ("low", "high"))
            if all(map(math.isfinite, (low_x, high_x, low_y, high_y))):
                error = {"xerr": [[x - low_x], [high_x - x]], "yerr": [[y - low_y], [high_y - y]]}
        marker = "*" if dense[i] else "o"
        axis.errorbar(x, y, fmt=marker, ms=10 if dense[i] else 6, color=f"C{i}", capsize=3, lw=1,
                      **error)  # fmt: skip
        if best:
            axis.plot(x, y, "o", ms=14, mfc="none", mec="k")
        axis.annotate(
            label, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=7,
            fontweight="bold" if best else "normal",
        )  # fmt: skip
    _scale_axis(axis, rows[y_column])
    _scale_axis(axis, rows[x_column], "x")
    axis.set_xlabel("general perplexity (lower is better)")
    axis.set_ylabel(f"{domain} perplexity (lower is better)")
    axis.set_title(f"{domain}: specificity vs generality (ringed: Pareto-optimal)", fontsize=10)
    figure.tight_layout()
    return figure


def benchmark_figure(by_rule: pd.DataFrame):
    import matplotlib.pyplot as plt

    rules = by_rule[~by_rule["rule"].str.startswith("all")]
    figure, axis = plt.subplots(figsize=(6.5, 0.45 * max(len(rules), 2) + 1.2))
    axis.barh(rules["rule"], rules["total_s"] / 60, color="C0")
    for y, (minutes, jobs) in enumerate(zip(rules["total_s"] / 60, rules["jobs"], strict=True)):
        axis.annotate(f" {minutes:.1f} min, {jobs} job(s)", (minutes, y), va="center", fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("total wall time (minutes)")
    axis.set_title("time per rule (benchmark: files)", fontsize=10)
    figure.tight_layout()
    return figure


def _main_from_csv(tables_dir: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    long = pd.read_csv(tables_dir / "metrics_long.csv", keep_default_na=False, na_values=[""])
    return main_table(long), interval_tables(long)


def plot(
    tables_dir: str | Path, out_dir: str | Path, calibration_series: list[dict[str, int]] = ()
) -> list[Path]:
    """Write bars_<domain>.png for every domain, frontier_<domain>.png for every domain but
    general, sparsity_<domain>.png when the tables hold several sparsities,
    calibration_size_<first domain>.png for each of `calibration_series` (see
    calibration_size_figure) and benchmarks.png; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    table, bounds = _main_from_csv(tables_dir)
    domains = list(dict.fromkeys(c[0] for c in table.columns))
    written = [
        _save_figure(bar_figure(table, d, bounds), out_dir / f"bars_{d}.png") for d in domains
    ]
    written += [
        _save_figure(frontier_figure(table, d, bounds), out_dir / f"frontier_{d}.png")
        for d in domains
        if d != "general"
    ]
    pruned = table.reset_index()
    sparsities = pruned.loc[pruned["pattern"] == "unstructured", "sparsity"].unique()
    if len(sparsities) > 1:
        written += [
            _save_figure(sparsity_figure(table, d, bounds), out_dir / f"sparsity_{d}.png")
            for d in domains
        ]
    written += [
        _save_figure(
            calibration_size_figure(table, sizes, bounds),
            out_dir / f"calibration_size_{next(iter(sizes))}.png",
        )
        for sizes in calibration_series
    ]
    by_rule = pd.read_csv(tables_dir / "benchmarks_by_rule.csv")
    written.append(_save_figure(benchmark_figure(by_rule), out_dir / "benchmarks.png"))
    return written
