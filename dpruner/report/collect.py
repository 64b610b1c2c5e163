"""The long frame: one row per (model, variant, domain, task, metric) value of the metrics JSON
files, and what each value rests on (counts).

The workflow lays metrics out as `<results>/metrics/<model>/<variant>/<domain>.json`
(`dpruner.plan.METRICS`), where the variant is `dense` or a pruned model's id, so a file's path
says which model it measures; its content gives the values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from dpruner.errors import DprunerError
from dpruner.intervals import GENERAL_PERPLEXITY, PERPLEXITY
from dpruner.plan import (
    DENSE,
    NO_CALIBRATION,
    parse_pruned_id,
    pattern_of_token,
    split_calibration_set,
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


def parse_variant(variant: str) -> dict:
    """`dense` or a pruned model's id (`dpruner.plan.pruned_id`) as its method, calibration
    (`general`, a domain or `none`), calibration draw, sparsity (a number) and pattern (`2:4`,
    `unstructured` or `dense`)."""
    if variant == DENSE:
        return {
            "method": DENSE,
            "calibration": NO_CALIBRATION,
            "draw": 0,
            "sparsity": 0.0,
            "pattern": DENSE,
        }
    parts = parse_pruned_id(variant)
    calibration, draw = split_calibration_set(parts["calib"])
    return {
        "method": parts["method"],
        "calibration": calibration,
        "draw": draw,
        "sparsity": float(parts["sparsity"]),
        "pattern": pattern_of_token(parts["pattern"]),
    }


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
