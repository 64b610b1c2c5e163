"""Tables (pandas: CSV, Markdown, LaTeX) and plots (matplotlib) from the metrics JSON files.

The workflow lays metrics out as `<results>/metrics/<model>/<variant>/<domain>.json`, where the
variant is `dense` or `<method>_<calibration>_s<sparsity>_<pattern>` (names contain no "_"), so a
file's path says which model it measures; its content gives the values. Entry points:
`aggregate(metrics_files, out_dir, benchmark_files)`, `plot(tables_dir, out_dir)` and
`summary(tables_dir, plots_dir, out_file)`, also run as `python -m dpruner.report <step>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dpruner.errors import DprunerError
from dpruner.io import atomic_output

VARIANT = re.compile(
    r"^(?P<method>[^_]+)_(?P<calibration>[^_]+)_s(?P<sparsity>[0-9.]+)_(?P<pattern>[^_]+)$"
)
# Metric names as evaluators spell them -> the names used in tables.
METRIC_ALIASES = {
    "acc": "accuracy",
    "accuracy": "accuracy",
    "macro_f1": "macro_f1",
    "f1_macro": "macro_f1",
    "macro-f1": "macro_f1",
    "rouge1": "rouge1",
    "rouge-1": "rouge1",
    "rouge_1": "rouge1",
    "rouge2": "rouge2",
    "rouge-2": "rouge2",
    "rouge_2": "rouge2",
    "rougel": "rougeL",
    "rouge-l": "rougeL",
    "rouge_l": "rougeL",
    "ppl": "ppl",
    "perplexity": "ppl",
}
# Column order within a domain, and labels for Markdown, LaTeX and plots.
METRIC_ORDER = ["ppl", "accuracy", "macro_f1", "rouge1", "rouge2", "rougeL"]
METRIC_LABELS = {
    "ppl": "PPL",
    "accuracy": "Acc",
    "macro_f1": "F1",
    "rouge1": "R-1",
    "rouge2": "R-2",
    "rougeL": "R-L",
}
# Task-level metrics shown in percent in Markdown and LaTeX (CSV keeps fractions).
PERCENT_METRICS = {"accuracy", "macro_f1", "rouge1", "rouge2", "rougeL"}
# Pseudo-task names of the two perplexities every evaluation reports.
PERPLEXITY = "perplexity"
GENERAL_PERPLEXITY = "general perplexity"
# In the cross-domain table each task shows one metric.
PRIMARY_METRICS = ("ppl", "accuracy", "rougeL")
ROW_KEYS = ["model", "method", "sparsity", "pattern"]


# ---------------------------------------------------------------- reading metrics files


def parse_variant(variant: str) -> dict:
    """`dense` or `<method>_<calibration>_s<sparsity>_<pattern>` as a dict of those four."""
    if variant == "dense":
        return {"method": "dense", "calibration": "none", "sparsity": 0.0, "pattern": "dense"}
    match = VARIANT.match(variant)
    if match is None:
        raise DprunerError(
            f"cannot read the pruned model id '{variant}': expected "
            "<method>_<calibration>_s<sparsity>_<pattern> or dense"
        )
    parts = match.groupdict()
    parts["sparsity"] = float(parts["sparsity"])
    parts["pattern"] = parts["pattern"].replace("of", ":")
    return parts


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _perplexity_value(entry) -> float | None:
    """A perplexity given as a number or as a dict with `ppl` (or `perplexity`)."""
    if isinstance(entry, dict):
        for key in ("ppl", "perplexity"):
            if key in entry:
                return _number(entry[key])
        return None
    return _number(entry)


def _task_metrics(entry) -> dict[str, float]:
    """{metric: value} of one task: a flat dict, or one with its values under `metrics`.

    lm-eval style names (`acc,none`) lose their filter suffix; standard errors are dropped.
    """
    if isinstance(entry, dict) and isinstance(entry.get("metrics"), dict):
        entry = entry["metrics"]
    if not isinstance(entry, dict):
        return {}
    values = {}
    for name, value in entry.items():
        name = str(name).split(",")[0]
        number = _number(value)
        if number is None or "stderr" in name:
            continue
        values[METRIC_ALIASES.get(name.lower(), name)] = number
    return values


def read_metrics(path: str | Path) -> list[dict]:
    """Long rows (model, variant, method, calibration, sparsity, pattern, domain, task, metric,
    value) of one metrics file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DprunerError(f"cannot read metrics file {path}: {error}") from None
    if not isinstance(data, dict):
        raise DprunerError(f"{path}: expected a JSON object")
    identity = {
        "model": path.parent.parent.name,
        "variant": path.parent.name,
        **parse_variant(path.parent.name),
        "domain": path.stem,
    }
    values: dict[tuple[str, str], float] = {}

    perplexity = data.get("perplexity")
    if isinstance(perplexity, dict) and "domain" in perplexity:
        values[PERPLEXITY, "ppl"] = _perplexity_value(perplexity["domain"])
        values[GENERAL_PERPLEXITY, "ppl"] = _perplexity_value(perplexity.get("general"))
    else:
        values[PERPLEXITY, "ppl"] = _perplexity_value(perplexity)
    if "general_perplexity" in data:
        values[GENERAL_PERPLEXITY, "ppl"] = _perplexity_value(data["general_perplexity"])
    if identity["domain"] == "general" and values.get((GENERAL_PERPLEXITY, "ppl")) is None:
        values[GENERAL_PERPLEXITY, "ppl"] = values[PERPLEXITY, "ppl"]

    tasks = data.get("tasks", data.get("metrics")) or {}
    if not isinstance(tasks, dict):
        raise DprunerError(f"{path}: 'tasks' must map task names to metrics")
    for task, entry in tasks.items():
        for metric, value in _task_metrics(entry).items():
            values[task, metric] = value

    return [
        {**identity, "task": task, "metric": metric, "value": value}
        for (task, metric), value in values.items()
        if value is not None
    ]


COUNT_COLUMNS = ["items", "dropped", "skipped_labels", "prompts_truncated"]


def read_counts(path: str | Path) -> list[dict]:
    """What each metric of one metrics file rests on: per task its items and the records left
    out (dropped: a label in no choice or an empty target; skipped: skip_labels), per perplexity
    the scored tokens and documents."""
    path = Path(path)
    data = json.loads(path.read_text())
    rows = []
    perplexity = data.get("perplexity")
    domain_ppl = perplexity.get("domain") if isinstance(perplexity, dict) else None
    if isinstance(domain_ppl, dict) and "tokens_scored" in domain_ppl:
        rows.append(
            {
                "task": PERPLEXITY,
                "tokens_scored": domain_ppl["tokens_scored"],
                "documents": domain_ppl.get("documents"),
            }
        )
    for task, entry in (data.get("tasks") or {}).items():
        counts = entry.get("counts") if isinstance(entry, dict) else None
        if isinstance(counts, dict):
            dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
            rows.append({"task": task, **counts, "dropped": dropped})
    return [{"variant": path.parent.name, "domain": path.stem, **row} for row in rows]


def counts_table(metrics_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per domain and task (the counts are the same for every model; the most items any
    model had is shown, so a task that lost items on one model cannot hide)."""
    rows = [row for path in metrics_files for row in read_counts(path)]
    columns = ["domain", "task", *COUNT_COLUMNS, "tokens_scored", "documents"]
    frame = pd.DataFrame(rows).reindex(columns=["variant", *columns])
    if frame.empty:
        return frame[columns]
    grouped = frame.groupby(["domain", "task"], sort=False)[columns[2:]].agg(["min", "max"])
    table = grouped.xs("max", axis=1, level=1).copy()
    differs = (grouped.xs("min", axis=1, level=1) != table) & table.notna()
    table["same_for_all_models"] = ~differs.any(axis=1)
    return table.reset_index()


def collect(metrics_files: Iterable[str | Path]) -> pd.DataFrame:
    rows = [row for path in metrics_files for row in read_metrics(path)]
    if not rows:
        raise DprunerError("no metrics to aggregate: no files given or none holds a value")
    return with_general_perplexity(pd.DataFrame(rows))


def with_general_perplexity(long: pd.DataFrame) -> pd.DataFrame:
    """Copy each model variant's perplexity on `general` next to its other domains.

    The workflow computes general perplexity once per variant (its `general` evaluation); a
    domain's metrics file that carries its own value keeps it.
    """
    general = long[(long["domain"] == "general") & (long["task"] == PERPLEXITY)]
    has_own = long[long["task"] == GENERAL_PERPLEXITY][["model", "variant", "domain"]]
    targets = long[long["domain"] != "general"].drop_duplicates(["model", "variant", "domain"])
    targets = targets.merge(has_own, how="left", indicator=True)
    targets = targets[targets["_merge"] == "left_only"].drop(columns=["_merge"])
    copies = targets.drop(columns=["value"]).merge(
        general[["model", "variant", "value"]], on=["model", "variant"]
    )
    copies = copies.assign(task=GENERAL_PERPLEXITY, metric="ppl")
    return pd.concat([long, copies[long.columns]], ignore_index=True)


# ---------------------------------------------------------------- tables


def _column_order(columns: Iterable[tuple], domains: list[str]) -> list[tuple]:
    """(domain, task, metric) columns: domains in order, then perplexity, the tasks, and general
    perplexity last; within a task the metrics in METRIC_ORDER."""

    def key(column):
        domain, task, metric = column
        task_rank = {PERPLEXITY: 0, GENERAL_PERPLEXITY: 2}.get(task, 1)
        metric_rank = METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)
        return (domains.index(domain), task_rank, task, metric_rank, metric)

    return sorted(columns, key=key)


def _domains(long: pd.DataFrame) -> list[str]:
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
    ranks["pruned_for"] = {domain: i for i, domain in enumerate(_domains(long))}
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
    table = table[_column_order(table.columns, _domains(long))]
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


def _flat_label(column: tuple) -> str:
    domain, task, metric = column
    if task == PERPLEXITY:
        return f"{domain}: PPL"
    if task == GENERAL_PERPLEXITY:
        return f"{domain}: general PPL"
    return f"{domain}: {task} {METRIC_LABELS.get(metric, metric)}"


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _formatted(value: float, metric: str) -> str:
    return f"{value * 100:.1f}" if metric in PERCENT_METRICS else f"{value:.2f}"


def _change(value: float, metric: str) -> str:
    """A paired change against a reference: perplexity in percent, other metrics in points."""
    return f"{value:+.1f}%" if metric == "ppl" else f"{value:+.1f} pt"


def _bracket(low, high, formatted) -> str:
    return f" [{formatted(low)}, {formatted(high)}]" if _finite(low) and _finite(high) else ""


def _value_cell(value, metric: str, bound) -> str:
    """`value [low, high] (change*)`; * marks a change whose interval excludes no change."""
    if not _finite(value):
        return "–"
    text = _formatted(value, metric)
    text += _bracket(bound("low"), bound("high"), lambda x: _formatted(x, metric))
    change = bound("change")
    if _finite(change):
        text += f" ({_change(change, metric)}{'*' if bound('significant') is True else ''})"
    return text


def _change_cell(value, metric: str, bound) -> str:
    """`change [low, high]*` of a paired comparison."""
    if not _finite(value):
        return "–"
    text = _change(value, metric)
    text += _bracket(bound("change_low"), bound("change_high"), lambda x: f"{x:+.1f}")
    return text + ("*" if bound("significant") is True else "")


def _display_frame(
    table: pd.DataFrame, bounds: dict[str, pd.DataFrame] | None = None, is_change: bool = False
) -> pd.DataFrame:
    """Strings for Markdown and LaTeX: percent metrics x100, perplexity with two decimals, each
    with its interval and paired change from `bounds` (interval_tables); `is_change` for a table
    of paired changes."""
    bounds = bounds or {}
    shown = pd.DataFrame(index=table.index)
    cell = _change_cell if is_change else _value_cell
    for column in table.columns:
        shown[column] = [
            cell(
                value,
                column[2],
                lambda name, row=row, column=column: (
                    bounds[name].at[row, column] if name in bounds else None
                ),
            )
            for row, value in table[column].items()
        ]
    shown.columns = pd.MultiIndex.from_tuples(table.columns, names=table.columns.names)
    return shown


def _markdown(shown: pd.DataFrame) -> str:
    """One Markdown table per domain: the paper's layout, readable without horizontal scrolling.
    The model column only when there are several models."""
    if shown.index.get_level_values("model").nunique() == 1:
        shown = shown.droplevel("model")
    sections = []
    for domain in dict.fromkeys(shown.columns.get_level_values("domain")):
        part = shown.xs(domain, axis=1, level="domain", drop_level=False)
        part.columns = [_flat_label(c).removeprefix(f"{domain}: ") for c in part.columns]
        part = part.reset_index()
        # disable_numparse: keep the strings as formatted (tabulate would re-format numbers).
        table = part.to_markdown(index=False, disable_numparse=True)
        sections.append(f"### {domain}\n\n{table}\n")
    return "\n".join(sections)


def _latex(shown: pd.DataFrame) -> str:
    shown = shown.copy()
    shown.columns = pd.MultiIndex.from_tuples(
        [
            (
                d,
                "PPL" if t == PERPLEXITY else "gen. PPL" if t == GENERAL_PERPLEXITY else t,
                METRIC_LABELS.get(m, m),
            )
            for d, t, m in shown.columns
        ]
    )
    return shown.to_latex(multicolumn=True, multicolumn_format="c", escape=True)


def _csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    flat.columns = [_flat_label(c) for c in flat.columns]
    return flat.reset_index()


def _write_text(path: Path, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def _write_table(
    table: pd.DataFrame,
    out_dir: Path,
    stem: str,
    bounds: dict[str, pd.DataFrame] | None = None,
    is_change: bool = False,
    header: str = "",
) -> list[Path]:
    shown = _display_frame(table, bounds, is_change)
    with atomic_output(out_dir / f"{stem}.csv") as tmp:
        _csv_frame(table).to_csv(tmp, index=False, float_format="%.6g")
    return [
        out_dir / f"{stem}.csv",
        _write_text(out_dir / f"{stem}.md", header + _markdown(shown)),
        _write_text(out_dir / f"{stem}.tex", _latex(shown)),
    ]


# ---------------------------------------------------------------- benchmarks


def read_benchmarks(benchmark_files: Iterable[str | Path]) -> pd.DataFrame:
    """One row per job: rule (the folder under `benchmarks/`), job, seconds, peak RSS in MB."""
    rows = []
    for path in benchmark_files:
        path = Path(path)
        parts = path.parts
        if "benchmarks" not in parts:
            raise DprunerError(f"{path}: a benchmark file must lie under a 'benchmarks' folder")
        below = parts[len(parts) - parts[::-1].index("benchmarks") :]
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


# ---------------------------------------------------------------- entry points


def provenance(config: dict | None) -> str:
    """A line saying what machine aggregated the run and which config settings produced it."""
    import platform

    import torch

    line = (
        f"Aggregated on {platform.machine()} with {os.cpu_count()} CPU threads "
        f"(torch {torch.__version__})"
    )
    if config:
        models = ", ".join(
            f"{name} ({'; '.join(f'{k} {v}' for k, v in entry.items())})"
            for name, entry in config["models"].items()
        )
        calibration = config["calibration"]
        line += (
            f"; jobs ran on device `{config.get('device', 'cpu')}`. Config: models {models}; "
            f"sparsities {config['sparsities']}; patterns {config['patterns']}; "
            f"calibration {calibration['nsamples']} x {calibration['seqlen']} tokens; "
            f"methods {', '.join(config['methods'])}"
        )
    return line + ".\n\n"


def interval_note(settings: dict) -> str:
    return (
        f"Brackets: {settings['level']:.0%} percentile bootstrap interval ({settings['resamples']} "
        f"resamples, seed {settings['seed']}) over perplexity windows, items or summaries. In "
        "parentheses: the paired change against the dense model on the same units (perplexity in "
        "percent, other metrics in points); * marks a change whose interval excludes no change."
        "\n\n"
    )


def best_baseline_markdown(best: pd.DataFrame) -> str:
    """One row per model against its domain's best baseline, per domain, task and metric."""
    if best.empty:
        return "No baseline to compare with.\n"
    rows = []
    for record in best.to_dict("records"):
        metric = record["metric"]
        rows.append(
            {
                "domain": record["domain"],
                "metric": _flat_label((record["domain"], record["task"], metric)).split(": ")[1],
                "method": record["method"],
                "value": _formatted(record["value"], metric),
                "best baseline": f"{record['best_baseline']} "
                f"({_formatted(record['best_value'], metric)})",
                "change vs best baseline": _change_cell(
                    record["change"], metric, lambda name, r=record: r.get(name)
                ),
            }
        )
    return (
        "Every model of a domain's main columns against the best baseline of that domain (the "
        "non-D-Pruner method with the best point estimate), paired on the same units.\n\n"
        + pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
        + "\n"
    )


def aggregate(
    metrics_files: Iterable[str | Path],
    out_dir: str | Path,
    benchmark_files: Iterable[str | Path] = (),
    config: dict | None = None,
) -> list[Path]:
    """Write the tables of out_dir: metrics_long.csv (every value with its interval and paired
    change against dense), main / main_change / cross_domain / vs_best_baseline as CSV, Markdown
    (and LaTeX), counts, and benchmarks.csv / benchmarks_by_rule.{csv,md}. Returns the paths."""
    from dpruner.intervals import DEFAULTS, best_baseline_table, load_units, with_intervals

    out_dir = Path(out_dir)
    metrics_files = list(metrics_files)
    config = config or {}
    settings = {**DEFAULTS, **(config.get("intervals") or {})}
    kinds = {name: m["kind"] for name, m in (config.get("methods") or {}).items()}
    long = collect(metrics_files)  # names an unreadable file first
    units = load_units(metrics_files)
    long = with_intervals(long, units, settings)
    header = provenance(config) + interval_note(settings)
    written = []
    with atomic_output(out_dir / "metrics_long.csv") as tmp:
        long.to_csv(tmp, index=False, float_format="%.6g")
    written.append(out_dir / "metrics_long.csv")
    main = main_table(long)
    bounds = interval_tables(long)
    written += _write_table(main, out_dir, "main", bounds, header=header)
    written += _write_table(
        bounds["change"], out_dir, "main_change", bounds, is_change=True, header=header
    )
    written += _write_table(
        cross_domain_table(long),
        out_dir,
        "cross_domain",
        interval_tables(long, cross_domain_table),
        header=header,
    )
    best = best_baseline_table(long, units, settings, kinds)
    with atomic_output(out_dir / "vs_best_baseline.csv") as tmp:
        best.to_csv(tmp, index=False, float_format="%.6g")
    written += [
        out_dir / "vs_best_baseline.csv",
        _write_text(out_dir / "vs_best_baseline.md", header + best_baseline_markdown(best)),
    ]
    counts = counts_table(metrics_files)
    with atomic_output(out_dir / "counts.csv") as tmp:
        counts.to_csv(tmp, index=False)
    written += [
        out_dir / "counts.csv",
        _write_text(
            out_dir / "counts.md",
            header
            + "What every metric rests on: items scored per task (records left out: dropped, "
            "a label in no choice or an empty target; skipped, a label listed in skip_labels), "
            "scored tokens and documents per perplexity.\n\n"
            + counts.to_markdown(index=False)
            + "\n",
        ),
    ]

    jobs = read_benchmarks(benchmark_files)
    with atomic_output(out_dir / "benchmarks.csv") as tmp:
        jobs.to_csv(tmp, index=False)
    by_rule = benchmarks_by_rule(jobs)
    with atomic_output(out_dir / "benchmarks_by_rule.csv") as tmp:
        by_rule.to_csv(tmp, index=False)
    written += [
        out_dir / "benchmarks.csv",
        out_dir / "benchmarks_by_rule.csv",
        _write_text(
            out_dir / "benchmarks_by_rule.md", header + by_rule.to_markdown(index=False) + "\n"
        ),
    ]
    return written


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
            label += f" ({pattern}, {sparsity:g})"
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


def plot(tables_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write bars_<domain>.png for every domain, frontier_<domain>.png for every domain but
    general, sparsity_<domain>.png when the tables hold several sparsities, and benchmarks.png;
    return the paths."""
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
    by_rule = pd.read_csv(tables_dir / "benchmarks_by_rule.csv")
    written.append(_save_figure(benchmark_figure(by_rule), out_dir / "benchmarks.png"))
    return written


def summary(tables_dir: str | Path, plots_dir: str | Path, out_file: str | Path) -> Path:
    """One Markdown page with the main, relative and cross-domain tables, the plots and the
    per-rule benchmark figures; links are relative to the page."""
    tables_dir, plots_dir, out_file = Path(tables_dir), Path(plots_dir), Path(out_file)

    def rel(path: Path) -> str:
        return os.path.relpath(path, out_file.parent)

    parts = [
        "# Benchmark results\n",
        "Generated by `snakemake` (rule `report`) from the metrics files; CSV and LaTeX versions "
        f"of every table are in [{rel(tables_dir)}]({rel(tables_dir)}). Perplexity: lower is "
        "better; accuracy, macro-F1 and ROUGE in percent. In parentheses: change relative to "
        "the dense model; – where a value does not apply (a model pruned for one domain has no "
        "row of its own in the other domains' columns: the cross-domain table has those).\n",
        "## Main comparison\n",
        (tables_dir / "main.md").read_text(),
        "## Cross-domain: pruned for one domain, evaluated on every domain\n",
        (tables_dir / "cross_domain.md").read_text(),
        "## What each metric rests on\n",
        (tables_dir / "counts.md").read_text(),
        "## Plots\n",
    ]
    # The plots of the domains in the tables (not stale files of an earlier config).
    domains = _domains(pd.read_csv(tables_dir / "metrics_long.csv"))
    names = [f"{kind}_{d}.png" for kind in ("bars", "frontier", "sparsity") for d in domains]
    pngs = [plots_dir / name for name in [*names, "benchmarks.png"]]
    parts += [f"![{png.stem}]({rel(png)})\n" for png in pngs if png.is_file()]
    parts += [
        "## Time and memory per rule\n",
        (tables_dir / "benchmarks_by_rule.md").read_text(),
    ]
    return _write_text(out_file, "\n".join(parts))


def register(subparsers) -> None:
    """Add the `aggregate`, `plot` and `summary` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("aggregate", help="tables from metrics JSON files")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics JSON files")
    p.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files")
    p.add_argument("--config-json", help="the run's config settings, for the provenance line")
    p.add_argument("--out", required=True, help="tables folder")
    p.set_defaults(
        func=lambda a: aggregate(
            a.metrics, a.out, a.benchmarks, json.loads(a.config_json) if a.config_json else None
        )
    )

    p = subparsers.add_parser("plot", help="plots from the tables folder")
    p.add_argument("--tables", required=True)
    p.add_argument("--out", required=True, help="plots folder")
    p.set_defaults(func=lambda a: plot(a.tables, a.out))

    p = subparsers.add_parser("summary", help="one Markdown page with every table and plot")
    p.add_argument("--tables", required=True)
    p.add_argument("--plots", required=True)
    p.add_argument("--out", required=True, help="Markdown file")
    p.set_defaults(func=lambda a: [summary(a.tables, a.plots, a.out)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpruner.report", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        written = args.func(args)
    except DprunerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
