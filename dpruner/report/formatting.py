"""Table cells as text (values with their intervals and paired changes), and tables written
as CSV, Markdown and LaTeX."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from dpruner.config import sparsity_token
from dpruner.intervals import GENERAL_PERPLEXITY, PERPLEXITY
from dpruner.io import atomic_output, write_text
from dpruner.report.across_models import RANKING, method_order, model_order
from dpruner.report.leaderboard import SETTING
from dpruner.report.tables import column_order

# Labels for Markdown, LaTeX and plots.
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


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.copy()
    flat.columns = [_flat_label(c) for c in flat.columns]
    return flat.reset_index()


def write_benchmark_tables(
    out: Path, title: str, header: list[str], table: pd.DataFrame, markdown_body: str
) -> str:
    """A benchmark's `out`.csv (its header as `#` comment lines, then `table`) and `out`.md (the
    title, the header as a list, then `markdown_body`), each renamed into place when complete.
    Returns the Markdown."""
    with atomic_output(out.with_suffix(".csv")) as tmp, tmp.open("w") as f:
        f.writelines(f"# {line}\n" for line in header)
        table.to_csv(f, index=False)
    markdown = "\n".join([f"# {title}", "", *(f"- {line}" for line in header)])
    markdown += "\n\n" + markdown_body
    write_text(out.with_suffix(".md"), markdown)
    return markdown


def write_table(
    table: pd.DataFrame,
    out_dir: Path,
    stem: str,
    bounds: dict[str, pd.DataFrame] | None = None,
    is_change: bool = False,
    header: str = "",
) -> list[Path]:
    shown = _display_frame(table, bounds, is_change)
    with atomic_output(out_dir / f"{stem}.csv") as tmp:
        csv_frame(table).to_csv(tmp, index=False, float_format="%.6g")
    return [
        out_dir / f"{stem}.csv",
        write_text(out_dir / f"{stem}.md", header + _markdown(shown)),
        write_text(out_dir / f"{stem}.tex", _latex(shown)),
    ]


def paired_markdown(table: pd.DataFrame, reference: str, reference_value: str, intro: str) -> str:
    """One row per model against the method named in column `reference` (its value in column
    `reference_value`), per domain, task and metric, after the paragraph `intro`."""
    label = reference.replace("_", " ")
    if table.empty:
        return f"No {label} to compare with.\n"
    # Sparsity and pattern only where the table holds several (a sparsity study).
    with_setting = len(table[["sparsity", "pattern"]].drop_duplicates()) > 1
    rows = []
    for record in table.to_dict("records"):
        metric = record["metric"]
        rows.append(
            {
                "domain": record["domain"],
                "metric": _flat_label((record["domain"], record["task"], metric)).split(": ")[1],
                "method": record["method"],
                **(
                    {"sparsity": sparsity_token(record["sparsity"]), "pattern": record["pattern"]}
                    if with_setting
                    else {}
                ),
                "value": _formatted(record["value"], metric),
                label: f"{record[reference]} ({_formatted(record[reference_value], metric)})",
                f"change vs {label}": _change_cell(
                    record["change"], metric, lambda name, r=record: r.get(name)
                ),
            }
        )
    return (
        intro + "\n\n" + pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n"
    )


def _leaderboard_cell(cell: dict, metric: str) -> str:
    """`rank letters · value`; with several calibration draws, then the ranges of the rank and
    of the value over the draws, e.g. `2 ab · 36.1 (draws: 1–3, 35.2–36.9)`."""
    text = f"{cell['rank']} {cell['group']} · {_formatted(cell['value'], metric)}"
    if pd.isna(cell.get("rank_low", float("nan"))):
        return text
    ranks = f"{cell['rank_low']:.0f}–{cell['rank_high']:.0f}"
    values = f"{_formatted(cell['value_low'], metric)}–{_formatted(cell['value_high'], metric)}"
    return f"{text} (draws: {ranks}, {values})"


def leaderboard_markdown(table: pd.DataFrame, intro: str) -> str:
    """One Markdown table per model, domain, sparsity and pattern of `leaderboard_table`, after
    the paragraph `intro`: a row per method (in the order of the first column's ranks), a column
    per metric, each cell `rank letters · value`."""
    if table.empty:
        return "No pruned model to rank.\n"
    with_model = table["model"].nunique() > 1
    with_setting = len(table[["sparsity", "pattern"]].drop_duplicates()) > 1
    sections = [intro + "\n"]
    for (model, domain, sparsity, pattern), part in table.groupby(SETTING, sort=False):
        columns = column_order(
            dict.fromkeys(zip(part["domain"], part["task"], part["metric"], strict=True)), [domain]
        )
        cells = {(r["task"], r["metric"], r["method"]): r for r in part.to_dict("records")}
        ranked = sorted(
            (r for r in cells.values() if (r["task"], r["metric"]) == columns[0][1:]),
            key=lambda r: r["rank"],
        )
        methods = dict.fromkeys([*(r["method"] for r in ranked), *part["method"]])
        rows = []
        for method in methods:
            row = {"method": method}
            for column in columns:
                cell = cells.get((*column[1:], method))
                row[_flat_label(column).removeprefix(f"{domain}: ")] = (
                    _leaderboard_cell(cell, column[2]) if cell else "–"
                )
            rows.append(row)
        title = f"{model}: {domain}" if with_model else domain
        if with_setting:
            title += f" ({pattern}, {sparsity_token(sparsity)})"
        body = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
        sections.append(f"### {title}\n\n{body}\n")
    return "\n".join(sections)


def _agreement_markdown(agreement: pd.DataFrame, with_setting: bool) -> str:
    """One row per domain, metric (and setting) and pair of models of `agreement_table`; the
    best groups' columns named after the models when there is one pair."""
    pairs = agreement[["model_a", "model_b"]].drop_duplicates()
    best = ["best a", "best b"] if len(pairs) > 1 else [f"best {m}" for m in pairs.iloc[0]]
    rows = []
    for r in agreement.to_dict("records"):
        rows.append(
            {
                "domain": r["domain"],
                "metric": _flat_label((r["domain"], r["task"], r["metric"])).split(": ")[1],
                **(
                    {"sparsity": sparsity_token(r["sparsity"]), "pattern": r["pattern"]}
                    if with_setting
                    else {}
                ),
                **(
                    {"models (a / b)": f"{r['model_a']} / {r['model_b']}"} if len(pairs) > 1 else {}
                ),
                "methods": str(r["methods"]),
                "tau-b": f"{r['tau_b']:.2f}" if _finite(r["tau_b"]) else "–",
                best[0]: r["best_a"] or "–",
                best[1]: r["best_b"] or "–",
                "same best": {True: "yes", False: "no"}.get(r["same_best"], "–"),
                "reversed": str(r["reversed"]),
            }
        )
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def leaderboard_models_markdown(board: pd.DataFrame, agreement: pd.DataFrame, intro: str) -> str:
    """The leaderboard across models, after the paragraph `intro`: the agreement table, then per
    domain, sparsity, pattern and (task, metric) a row per method and a column per model, each
    cell `rank letters · value` of that model's leaderboard (– where the method was not run on
    it)."""
    if agreement.empty:
        return intro + "\n\nNo method ranked on two models.\n"
    models = model_order(board)
    with_setting = len(board[["sparsity", "pattern"]].drop_duplicates()) > 1
    sections = [
        intro + "\n",
        "### Agreement\n\n" + _agreement_markdown(agreement, with_setting) + "\n",
    ]
    for (domain, sparsity, pattern, task, metric), part in board.groupby(RANKING, sort=False):
        cells = {(r["model"], r["method"]): r for r in part.to_dict("records")}
        rows = [
            {
                "method": method,
                **{
                    model: _leaderboard_cell(cells[model, method], metric)
                    if (model, method) in cells
                    else "–"
                    for model in models
                },
            }
            for method in method_order(part, models)
        ]
        title = _flat_label((domain, task, metric))
        if with_setting:
            title += f" ({pattern}, {sparsity_token(sparsity)})"
        body = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
        sections.append(f"### {title}\n\n{body}\n")
    return "\n".join(sections)
