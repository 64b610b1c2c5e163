"""The `aggregate`, `plot` and `summary` subcommands of `python -m dpruner`."""

from __future__ import annotations

from dpruner.io import check_output_file
from dpruner.report.aggregate import aggregate
from dpruner.report.plots import plot
from dpruner.report.summary import summary
from dpruner.specs import AggregateSpec, PlotSpec


def register(subparsers) -> None:
    """Add the `aggregate`, `plot` and `summary` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser("aggregate", help="tables from metrics JSON files")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics JSON files")
    p.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files")
    p.add_argument(
        "--spec",
        help="the run's settings (dpruner.specs.AggregateSpec as JSON): the provenance line, the "
        "baselines, the intervals; absent: no provenance, no baselines, the default intervals",
    )
    p.add_argument("--out", required=True, help="tables folder")
    p.set_defaults(
        func=lambda a: aggregate(
            a.metrics, a.out, a.benchmarks, AggregateSpec.from_json(a.spec) if a.spec else None
        )
    )

    p = subparsers.add_parser("plot", help="plots from the tables folder")
    p.add_argument("--tables", required=True)
    p.add_argument("--out", required=True, help="plots folder")
    p.add_argument(
        "--spec",
        default="{}",
        help="dpruner.specs.PlotSpec as JSON: its calibration_series, a list of {domain: "
        "calibration instances}, one figure of metric against size each",
    )
    p.set_defaults(
        func=lambda a: plot(a.tables, a.out, PlotSpec.from_json(a.spec).calibration_series)
    )

    p = subparsers.add_parser("summary", help="one Markdown page with every table and plot")
    p.add_argument("--tables", required=True)
    p.add_argument("--plots", required=True)
    p.add_argument("--out", required=True, help="Markdown file")
    p.set_defaults(func=_cmd_summary)


def _cmd_summary(args) -> list:
    # An output inside the tables or plots folder would become one of the page's inputs.
    check_output_file(args.out, True, (args.tables, args.plots))
    return [summary(args.tables, args.plots, args.out)]
