"""The `aggregate` step: every table of a run from its metrics and benchmark files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from dpruner.io import atomic_output, write_text
from dpruner.report.across_models import agreement_table, side_by_side
from dpruner.report.benchmarks import benchmarks_by_rule, read_benchmarks
from dpruner.report.collect import collect, counts_table
from dpruner.report.draws import (
    draw_count,
    draw_spread_table,
    draws_note,
    first_draw,
    leaderboard_with_draws,
)
from dpruner.report.formatting import (
    leaderboard_markdown,
    leaderboard_models_markdown,
    paired_markdown,
    write_table,
)
from dpruner.report.tables import cross_domain_table, interval_tables, main_table
from dpruner.specs import AggregateSpec, Intervals


def provenance(spec: AggregateSpec | None) -> str:
    """A line saying what machine aggregated the run and which config settings produced it."""
    import platform

    import torch

    line = (
        f"Aggregated on {platform.machine()} with {os.cpu_count()} CPU threads "
        f"(torch {torch.__version__})"
    )
    if spec:
        models = ", ".join(
            f"{name} ({'; '.join(f'{k} {v}' for k, v in entry.items())})"
            for name, entry in spec.models.items()
        )
        calibration = spec.calibration
        line += (
            f"; jobs ran on device `{spec.device}`. Config: models {models}; "
            f"sparsities {spec.sparsities}; patterns {spec.patterns}; "
            f"calibration {calibration['nsamples']} x {calibration['seqlen']} tokens; "
            f"methods {', '.join(spec.methods)}"
        )
    return line + ".\n\n"


def interval_note(settings: Intervals) -> str:
    return (
        f"Brackets: {settings.level:.0%} percentile bootstrap interval ({settings.resamples} "
        f"resamples, seed {settings.seed}) over perplexity windows, items or summaries. In "
        "parentheses: the paired change against the dense model on the same units (perplexity in "
        "percent, other metrics in points); * marks a change whose interval excludes no change."
        "\n\n"
    )


def _paired_table(table, stem: Path, header: str, markdown: str) -> list[Path]:
    with atomic_output(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return [stem.with_suffix(".csv"), write_text(stem.with_suffix(".md"), header + markdown)]


def aggregate(
    metrics_files: Iterable[str | Path],
    out_dir: str | Path,
    benchmark_files: Iterable[str | Path] = (),
    spec: AggregateSpec | None = None,
) -> list[Path]:
    """Write the tables of out_dir: metrics_long.csv (every value with its interval and paired
    change against dense), main / main_change / cross_domain / vs_best_baseline / leaderboard
    (and leaderboard_models where the metrics hold several models, vs_unquantized where the
    config quantizes) as CSV, Markdown (and LaTeX), counts, and
    benchmarks.csv / benchmarks_by_rule.{csv,md}. `spec`: the run's settings; None: no
    provenance, no baselines, no quantized twins, the default intervals. Returns the paths."""
    from dpruner.config import unquantized_twins
    from dpruner.intervals import (
        best_baseline_table,
        load_units,
        unquantized_table,
        with_intervals,
    )

    out_dir = Path(out_dir)
    metrics_files = list(metrics_files)
    settings = spec.intervals if spec else Intervals()
    every_draw = collect(metrics_files)  # names an unreadable file first
    units = load_units(metrics_files)
    every_draw = with_intervals(every_draw, units, settings)
    draws = draw_count(every_draw)
    spread = draw_spread_table(every_draw)
    long = first_draw(every_draw)
    header = provenance(spec) + interval_note(settings) + draws_note(spread, draws)
    written = []
    with atomic_output(out_dir / "metrics_long.csv") as tmp:
        long.to_csv(tmp, index=False, float_format="%.6g")
    written.append(out_dir / "metrics_long.csv")
    main = main_table(long)
    bounds = interval_tables(long)
    written += write_table(main, out_dir, "main", bounds, header=header)
    written += write_table(
        bounds["change"], out_dir, "main_change", bounds, is_change=True, header=header
    )
    written += write_table(
        cross_domain_table(long),
        out_dir,
        "cross_domain",
        interval_tables(long, cross_domain_table),
        header=header,
    )
    best = best_baseline_table(long, units, settings, spec.baselines if spec else [])
    written += _paired_table(
        best,
        out_dir / "vs_best_baseline",
        header,
        paired_markdown(
            best,
            "best_baseline",
            "best_value",
            "Every model of a domain's main columns against the best baseline of that domain (of "
            "the config's `baselines`, the one with the best point estimate), paired on the same "
            "units.",
        ),
    )
    board = leaderboard_with_draws(every_draw, units, settings)
    written += _paired_table(
        board,
        out_dir / "leaderboard",
        header,
        leaderboard_markdown(
            board,
            "Every pruned model of a domain's main columns ranked on each metric; each cell: its "
            "rank (1: the best point estimate; perplexity lower is better, accuracy, macro-F1 and "
            "ROUGE-L higher), its group letters, its value. Two methods that share a letter are "
            "not told apart: the paired interval of their difference (of perplexity: their ratio) "
            "contains no change; two without a common letter differ (every pair compared on the "
            "same units at the intervals' level, without a multiplicity adjustment).",
        ),
    )
    if long["model"].nunique() > 1:
        written += _paired_table(
            side_by_side(board),
            out_dir / "leaderboard_models",
            header,
            leaderboard_models_markdown(
                board,
                agreement_table(board),
                "Does a method's place on one model hold on another? Each table below is one "
                "ranking of leaderboard.md on every model side by side: a row per method, a cell "
                "per model with its rank, group letters and value there (– where the method was "
                "not run on that model). The agreement table compares two models' rankings over "
                "the methods ranked on both: Kendall's tau-b of their ranks (1 the same order, "
                "-1 the reverse, 0 unrelated; equal values count as ties, not as an order; – "
                "where either model orders no pair), each model's best group (the methods "
                "holding letter `a`) and whether it is the same on both, and the reversed pairs: "
                "two methods whose paired interval tells them apart on both models, in opposite "
                "orders. Read the best group and the reversed pairs first: ranks inside a group "
                "are point estimates the intervals cannot separate, so swaps there lower tau-b "
                "without evidence that the order changed; a reversed pair is such evidence.",
            ),
        )
    if draws > 1:
        written += _paired_table(
            spread,
            out_dir / "draw_spread",
            header,
            "Every value of a domain's main columns measured at several calibration draws: draw "
            "0's value and bootstrap interval, the lowest and highest value over the draws, their "
            "range, and the range in widths of draw 0's interval (above 1: the calibration draw "
            "moves the value more than the evaluation sample's interval spans).\n\n"
            + spread.to_markdown(index=False, floatfmt=".4g")
            + "\n",
        )
    twins = unquantized_twins(spec.methods) if spec else {}
    if twins:
        twinned = unquantized_table(long, units, settings, twins)
        written += _paired_table(
            twinned,
            out_dir / "vs_unquantized",
            header,
            paired_markdown(
                twinned,
                "unquantized",
                "unquantized_value",
                "What quantization costs: every quantized model against its 16-bit twin (the "
                "method with the same options but `quantize`, same calibration, sparsity and "
                "pattern), paired on the same units.",
            ),
        )
    counts = counts_table(metrics_files)
    with atomic_output(out_dir / "counts.csv") as tmp:
        counts.to_csv(tmp, index=False)
    written += [
        out_dir / "counts.csv",
        write_text(
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
        write_text(
            out_dir / "benchmarks_by_rule.md", header + by_rule.to_markdown(index=False) + "\n"
        ),
    ]
    return written
