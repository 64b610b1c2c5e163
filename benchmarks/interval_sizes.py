"""How many perplexity windows a run would need for a paired interval of a given half-width.

For every domain (its own perplexity and general perplexity) and every pair of pruned models in
that domain's main columns, the paired 95 % bootstrap interval of the perplexity ratio on the
run's windows (the tables' own computation, dpruner.intervals.compare), its half-width on the log
scale, and the windows it would take to bring that half-width to the target: a half-width shrinks
as 1 / sqrt(windows), so `windows x (half-width / target)^2`. Its cost: those windows for every
model evaluated on that text, at the perplexity rate of results/tables/evaluation_throughput.csv.

    .venv/bin/python benchmarks/interval_sizes.py --run results/run

Writes results/tables/interval_sizes.{csv,md}.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
from pathlib import Path

import pandas as pd

from dpruner import stats
from dpruner.config import load_config
from dpruner.intervals import PERPLEXITY, compare, load_units, main_columns, units_for
from dpruner.machine import machine_description
from dpruner.report.collect import collect
from dpruner.report.draws import first_draw
from dpruner.report.formatting import write_benchmark_tables
from dpruner.specs import Intervals, intervals

OUT = Path("results/tables/interval_sizes")
THROUGHPUT = Path("results/tables/evaluation_throughput.csv")


def label(record: dict) -> str:
    """The method, and the domain a model was calibrated for (general text has both domains')."""
    calibration = record["calibration"]
    return record["method"] + ("" if calibration in ("none", "general") else f"[{calibration}]")


def pair_rows(long: pd.DataFrame, units: dict, settings: Intervals, target: float) -> list[dict]:
    """Every pair of models shown together on a perplexity column, once per scored text (a
    domain's text, or general text in any domain's general-perplexity column)."""
    rows = {}
    shown = main_columns(long)
    for (model, domain, task), group in shown[shown["metric"] == "ppl"].groupby(
        ["model", "domain", "task"]
    ):
        text = domain if task == PERPLEXITY else "general"
        records = group.sort_values("method").to_dict("records")
        for first, second in itertools.combinations(records, 2):
            pair = f"{label(second)} / {label(first)}"
            if (text, pair) in rows:
                continue
            base = units_for(units, model, first["variant"], domain, task, "ppl")
            other = units_for(units, model, second["variant"], domain, task, "ppl")
            result = compare(base, other, settings)
            half_width = stats.log_half_width(
                1 + result["change_low"] / 100, 1 + result["change_high"] / 100
            )
            windows = len(base.ids)
            rows[text, pair] = {
                "text": text,
                "pair": pair,
                "change_%": result["change"],
                "low_%": result["change_low"],
                "high_%": result["change_high"],
                "significant": result["significant"],
                "windows": windows,
                "half_width_%": math.expm1(half_width) * 100,
                "windows_needed": stats.units_for_half_width(windows, half_width, target),
                "tokens_per_window": sum(base.arrays[1]) / windows,
            }
    return list(rows.values())


def summary(pairs: pd.DataFrame, models_per_text: dict, tokens_per_s: float) -> pd.DataFrame:
    """Per scored text: the windows the pairs need (magnitude, hundreds of percent from every
    other model, set apart), and the perplexity seconds the largest need would take for every
    model scored on that text."""
    rows = []
    for text, group in pairs.groupby("text", sort=False):
        without = group[~group["pair"].str.contains("magnitude")]
        needed = int(without["windows_needed"].max())
        tokens = needed * group["tokens_per_window"].iloc[0] * models_per_text[text]
        rows.append(
            {
                "text": text,
                "windows": int(group["windows"].iloc[0]),
                "pairs without magnitude": len(without),
                "half-width % (median)": without["half_width_%"].median(),
                "half-width % (max)": without["half_width_%"].max(),
                "windows needed (max)": needed,
                "windows needed (max, with magnitude)": int(group["windows_needed"].max()),
                "models scored": models_per_text[text],
                "perplexity s for the max": tokens / tokens_per_s,
            }
        )
    return pd.DataFrame(rows)


def perplexity_rate(path: Path) -> float:
    table = pd.read_csv(path, comment="#")
    return float(table[table["measure"].str.startswith("perplexity")]["tokens_per_s"].iloc[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="results/run", help="a finished run's results folder")
    parser.add_argument("--config", default="config/config.yaml", help="the run's config")
    parser.add_argument("--target", type=float, default=2.5, help="half-width in percent")
    parser.add_argument("--throughput", default=str(THROUGHPUT), help="evaluation_throughput.csv")
    parser.add_argument("--out", default=str(OUT), help="output path without suffix")
    args = parser.parse_args()

    config = load_config(args.config)
    settings = intervals(config)
    metrics_files = sorted(Path(args.run, "metrics").glob("*/*/*.json"))
    # Draw 0 of a run with several calibration draws: its tables' models.
    long = first_draw(collect(metrics_files))
    units = load_units(metrics_files)
    target = math.log1p(args.target / 100)
    pairs = pd.DataFrame(pair_rows(long, units, settings, target)).sort_values(["text", "pair"])
    scored = long[(long["metric"] == "ppl") & (long["task"] == PERPLEXITY)]
    models_per_text = scored.groupby("domain")["variant"].nunique().to_dict()
    rate = perplexity_rate(Path(args.throughput))
    table = summary(pairs, models_per_text, rate)
    header = [
        f"machine: {machine_description()}",
        f"command: python {shlex.join(sys.argv)}",
        f"run: {args.run}, config {args.config}; intervals {settings.level:.0%} paired "
        f"percentile bootstrap, {settings.resamples} resamples, seed {settings.seed}",
        f"target: +-{args.target} % on the perplexity ratio of two models on the same windows",
        f"windows needed = windows x (half-width / target)^2 on the log scale, a lower bound "
        "(a bootstrap on few windows understates the spread); seconds at "
        f"{rate:.1f} tokens/s (the perplexity row of {args.throughput})",
        f"perplexity alone at the largest need without magnitude, every text: "
        f"{table['perplexity s for the max'].sum():.0f} s",
    ]
    body = table.to_markdown(index=False, floatfmt=".4g") + "\n\nEvery pair:\n\n"
    body += pairs.to_markdown(index=False, floatfmt=".4g") + "\n"
    text = write_benchmark_tables(
        Path(args.out),
        "Perplexity windows for a paired interval of the target half-width",
        header,
        pairs,
        body,
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
