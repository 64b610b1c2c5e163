"""`prepare-data`: a domain's (or `general`'s) calibration tokens, its domain instances and what
they hold."""

from __future__ import annotations

from pathlib import Path

from dpruner.io import check_output_file
from dpruner.plan import calibration_seed
from dpruner.specs import PrepareDataSpec, prepare_data_spec
from dpruner.steps.common import config_spec
from dpruner.steps.flags import add_overwrite_arg, add_spec_arg


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare-data", help="calibration tokens and domain instances of a domain"
    )
    add_spec_arg(p)
    p.add_argument("--config", help="a config file (checked against the schema), with --domain")
    p.add_argument(
        "--domain",
        help="`general`, a name under `domains:` or a draw of one, `medical+1` (with --config)",
    )
    p.add_argument("--model", required=True, help="model directory (for its tokenizer)")
    p.add_argument("--out", required=True, help="folder for calibration.pt and instances.jsonl")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def job_spec(args) -> PrepareDataSpec:
    """From --spec, or from --config and --domain as the workflow builds it (the config seed)."""
    from dpruner.errors import DprunerError

    if args.config and not args.domain:
        raise DprunerError("--config FILE needs --domain NAME")
    return config_spec(args, PrepareDataSpec, configured_seed, args.domain)


def configured_seed(config: dict, domain: str) -> PrepareDataSpec:
    """The spec the workflow builds for `domain` (or a draw of it, `medical+1`) with its seed."""
    return prepare_data_spec(config, domain, calibration_seed(config, domain))


def run(args) -> dict:
    from dpruner.data import write_calibration
    from dpruner.models import load_tokenizer
    from dpruner.preflight import check_calibration, local_paths

    spec = job_spec(args)
    # The data is checked before the tokenizer (and any model file) is read.
    check_calibration(spec)
    inputs = (args.model, args.config, *local_paths([spec.entries]))
    for name in ("calibration.pt", "instances.jsonl", "calibration.json"):
        check_output_file(Path(args.out) / name, args.overwrite, inputs)
    return write_calibration(spec, load_tokenizer(args.model), args.out)
