"""95 % bootstrap intervals for every value of the tables, and paired comparisons between models.

The resampling units are what each metric is computed from, as the metrics files keep them:
perplexity windows (NLL sum and scored tokens: perplexity is a ratio of sums), multiple-choice
items (gold and predicted choice: accuracy and macro-F1) and summaries (ROUGE F-measures). Two
models are compared on the same units with the same resamples (`dpruner.stats`): perplexity as a
ratio (shown as a percent change), the other metrics as a difference in points. A comparison is
significant when its interval excludes no change.

Every pruned model is compared with the dense model, and with the best baseline of its domain:
the non-D-Pruner method with the best point estimate among the models shown in that domain's
columns of the main table; a quantized model also with its 16-bit twin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dpruner import stats
from dpruner.specs import Intervals

# Pseudo-task names of the two perplexities every evaluation reports.
PERPLEXITY = "perplexity"
GENERAL_PERPLEXITY = "general perplexity"
KEY = ["model", "variant", "domain", "task", "metric"]


@dataclass(frozen=True)
class Units:
    """The per-unit arrays one metric of one evaluation is computed from."""

    kind: str  # "perplexity", "mean" or "macro_f1"
    ids: tuple
    arrays: tuple

    def statistic(self, n_classes: int = 0):
        if self.kind == "perplexity":
            return stats.perplexity_statistic
        if self.kind == "macro_f1":
            return stats.macro_f1_statistic(n_classes)
        return stats.mean

    @property
    def n_classes(self) -> int:
        return int(max(max(a) for a in self.arrays)) + 1 if self.kind == "macro_f1" else 0


def read_units(path: str | Path) -> dict[tuple[str, str], Units]:
    """{(task, metric): Units} of one metrics file; metrics without per-unit data are absent."""
    data = json.loads(Path(path).read_text())
    units = {}
    perplexity = data.get("perplexity")
    domain = perplexity.get("domain") if isinstance(perplexity, dict) else None
    if isinstance(domain, dict) and domain.get("window_nll"):
        nll = np.asarray(domain["window_nll"], dtype=float)
        tokens = np.asarray(domain["window_tokens"], dtype=float)
        # Windows have no names: their token counts stand in, so two evaluations pair only if
        # they scored the same windows.
        units[PERPLEXITY, "ppl"] = Units("perplexity", tuple(tokens), (nll, tokens))
    for task, entry in (data.get("tasks") or {}).items():
        items = entry.get("per_item") if isinstance(entry, dict) else None
        if not items:
            continue
        ids = tuple(str(item["id"]) for item in items)
        if entry.get("kind") == "multiple_choice":
            gold = np.array([item["gold"] for item in items])
            predicted = np.array([item["predicted"] for item in items])
            units[task, "accuracy"] = Units("mean", ids, ((gold == predicted).astype(float),))
            units[task, "macro_f1"] = Units("macro_f1", ids, (gold, predicted))
        else:
            for metric in ("rouge1", "rouge2", "rougeL"):
                values = np.array([item[metric] for item in items], dtype=float)
                units[task, metric] = Units("mean", ids, (values,))
    return units


def _identity(path: Path) -> tuple[str, str, str]:
    return path.parent.parent.name, path.parent.name, path.stem


def load_units(metrics_files) -> dict[tuple, Units]:
    """{(model, variant, domain, task, metric): Units}; general perplexity, computed once per
    model in its `general` evaluation, is shared by every domain of that model."""
    units = {}
    for path in map(Path, metrics_files):
        model, variant, domain = _identity(path)
        for (task, metric), unit in read_units(path).items():
            units[model, variant, domain, task, metric] = unit
    for (model, variant, domain, task, metric), unit in list(units.items()):
        if domain == "general" and task == PERPLEXITY:
            units[model, variant, "general", GENERAL_PERPLEXITY, metric] = unit
    return units


def units_for(units: dict, model, variant, domain, task, metric) -> Units | None:
    if task == GENERAL_PERPLEXITY:
        return units.get((model, variant, "general", GENERAL_PERPLEXITY, metric))
    return units.get((model, variant, domain, task, metric))


def interval(unit: Units, settings: Intervals) -> stats.Interval:
    return stats.bootstrap_ci(
        unit.arrays,
        unit.statistic(unit.n_classes),
        resamples=settings.resamples,
        seed=settings.seed,
        level=settings.level,
    )


def compare(base: Units, other: Units, settings: Intervals) -> dict | None:
    """`other` against `base` on the same units: the percent change of perplexity (ratio - 1)
    or the difference in points of the other metrics, with its interval; None when the units
    differ (different items or windows)."""
    if base.ids != other.ids or base.kind != other.kind:
        return None
    ratio = base.kind == "perplexity"
    result = stats.paired_bootstrap(
        base.arrays,
        other.arrays,
        base.statistic(max(base.n_classes, other.n_classes)),
        contrast="ratio" if ratio else "difference",
        resamples=settings.resamples,
        seed=settings.seed,
        level=settings.level,
    )
    shift = (lambda x: (x - 1) * 100) if ratio else (lambda x: x * 100)
    return {
        "change": shift(result.estimate),
        "change_low": shift(result.low),
        "change_high": shift(result.high),
        "significant": bool(result.significant),
    }


def with_intervals(long: pd.DataFrame, units: dict, settings: Intervals) -> pd.DataFrame:
    """`long` with the interval of every value (low, high, units) and its paired change against
    the dense model of the same model (change, change_low, change_high, significant)."""
    rows = []
    for record in long.to_dict("records"):
        key = [record[k] for k in KEY]
        unit = units_for(units, *key)
        extra = {"low": np.nan, "high": np.nan, "units": np.nan}
        if unit is not None:
            ci = interval(unit, settings)
            extra.update(low=ci.low, high=ci.high, units=len(unit.ids))
            dense = units_for(units, key[0], "dense", *key[2:])
            if record["variant"] != "dense" and dense is not None:
                extra.update(compare(dense, unit, settings) or {})
        rows.append({**record, **extra})
    columns = [*long.columns, "low", "high", "units", "change", "change_low", "change_high"]
    return pd.DataFrame(rows).reindex(columns=[*columns, "significant"])


PAIRED_COLUMNS = ["model", "domain", "task", "metric", "method", "sparsity", "pattern", "value"]
CHANGE_COLUMNS = ["change", "change_low", "change_high", "significant"]


def main_columns(long: pd.DataFrame) -> pd.DataFrame:
    """The pruned models of each domain's main columns: general-calibrated, uncalibrated or
    calibrated for that domain."""
    return long[
        (long["method"] != "dense")
        & (long["calibration"].isin(["none", "general"]) | (long["calibration"] == long["domain"]))
    ]


def _paired_row(units: dict, settings: Intervals, record: dict, reference: dict) -> dict:
    """`record`'s value and its paired change against `reference` (the same model, domain, task
    and metric of another variant); no change where the units do not pair."""
    key = [record[k] for k in ("model", "domain", "task", "metric")]
    unit = units_for(units, key[0], record["variant"], *key[1:])
    base = units_for(units, key[0], reference["variant"], *key[1:])
    comparison = compare(base, unit, settings) if unit is not None and base is not None else None
    return {**{k: record[k] for k in PAIRED_COLUMNS}, **(comparison or {})}


def best_baseline_table(
    long: pd.DataFrame, units: dict, settings: Intervals, baselines: list[str]
) -> pd.DataFrame:
    """Per domain, task, metric, sparsity and pattern: the best baseline (one of the `baselines`
    methods, by its point estimate among the models of the domain's main columns at that
    sparsity and pattern) and every other model of those columns against it, paired."""
    rows = []
    keys = ["model", "domain", "task", "metric", "sparsity", "pattern"]
    for _, group in main_columns(long).groupby(keys, sort=False):
        candidates = group[group["method"].isin(baselines)]
        if candidates.empty:
            continue
        lower_is_better = group["metric"].iloc[0] == "ppl"
        best = candidates.sort_values("value", ascending=lower_is_better).iloc[0]
        rows += [
            {
                **_paired_row(units, settings, record, best),
                "best_baseline": best["method"],
                "best_value": best["value"],
            }
            for record in group.to_dict("records")
            if record["variant"] != best["variant"]
        ]
    columns = [*PAIRED_COLUMNS, "best_baseline", "best_value", *CHANGE_COLUMNS]
    return pd.DataFrame(rows).reindex(columns=columns)


def unquantized_table(
    long: pd.DataFrame, units: dict, settings: Intervals, twins: dict[str, str | None]
) -> pd.DataFrame:
    """Every model of a quantized method in the main columns against its 16-bit twin's model of
    the same calibration, sparsity and pattern, paired: what quantization costs that method."""
    shown = main_columns(long)
    same = ["model", "domain", "task", "metric", "calibration", "sparsity", "pattern"]
    by_key = {(*(r[k] for k in same), r["method"]): r for r in shown.to_dict("records")}
    rows = []
    for record in shown.to_dict("records"):
        twin = by_key.get((*(record[k] for k in same), twins.get(record["method"])))
        if twin is not None:
            rows.append(
                {
                    **_paired_row(units, settings, record, twin),
                    "unquantized": twin["method"],
                    "unquantized_value": twin["value"],
                }
            )
    columns = [*PAIRED_COLUMNS, "unquantized", "unquantized_value", *CHANGE_COLUMNS]
    return pd.DataFrame(rows).reindex(columns=columns)
