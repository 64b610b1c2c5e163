"""`prepare-data`: a domain's (or `general`'s) calibration tokens, its domain instances and what
they hold."""

from __future__ import annotations

from pathlib import Path

from dpruner.io import check_output_file
from dpruner.steps.common import local_inputs, read_config
from dpruner.steps.flags import add_config_args, add_overwrite_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare-data", help="calibration tokens and domain instances of a domain"
    )
    add_config_args(p)
    p.add_argument("--domain", required=True, help="`general` or a name under `domains:`")
    p.add_argument("--model", required=True, help="model directory (for its tokenizer)")
    p.add_argument("--out", required=True, help="folder for calibration.pt and instances.jsonl")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from dpruner.data import write_calibration
    from dpruner.models import load_tokenizer
    from dpruner.preflight import check_section

    config = read_config(args)
    # The data is checked before the tokenizer (and any model file) is read.
    check_section(config, args.domain, parts=("calibration",))
    inputs = (args.model, args.config, *local_inputs(config))
    for name in ("calibration.pt", "instances.jsonl", "calibration.json"):
        check_output_file(Path(args.out) / name, args.overwrite, inputs)
    return write_calibration(config, args.domain, load_tokenizer(args.model), args.out)
