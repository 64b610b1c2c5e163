"""`evaluate`: every metric of one model on its domains; the model loads once for all of them."""

from __future__ import annotations

from dpruner.io import check_output_file
from dpruner.steps.common import local_inputs, read_config
from dpruner.steps.flags import add_config_args, add_overwrite_arg


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="every metric of one model on its domains")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--domain", required=True, action="append", help="`general` or a domain; repeatable"
    )
    add_config_args(p)
    p.add_argument(
        "--out", required=True, action="append", help="metrics JSON file, one per --domain"
    )
    p.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from dpruner.evaluation.runner import evaluate_domains

    config = read_config(args)
    inputs = (args.model, args.config, *local_inputs(config))
    for out in args.out:
        check_output_file(out, args.overwrite, inputs)
    results = evaluate_domains(args.model, args.domain, config, args.out, args.device)
    return {
        domain: {"out": out, "perplexity": result["perplexity"], "wall_s": result["wall_s"]}
        for (domain, result), out in zip(results.items(), args.out, strict=True)
    }
