"""`evaluate`: every metric of one model on its domains; the model loads once for all of them."""

from __future__ import annotations

from dataclasses import replace

from dpruner.errors import DprunerError
from dpruner.io import check_output_file
from dpruner.specs import EvaluateSpec, evaluate_spec
from dpruner.steps.common import config_spec
from dpruner.steps.flags import add_overwrite_arg, add_spec_arg


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="every metric of one model on its domains")
    p.add_argument("--model", required=True)
    p.add_argument(
        "--domain", required=True, action="append", help="`general` or a domain; repeatable"
    )
    add_spec_arg(p)
    p.add_argument("--config", help="a config file (checked against the schema)")
    p.add_argument(
        "--out", required=True, action="append", help="metrics JSON file, one per --domain"
    )
    p.add_argument("--device", help="with --config: where the model runs (default: the config's)")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def every_part(config: dict, domains: list[str]) -> EvaluateSpec:
    """The spec of `domains` evaluated on every part (perplexity and tasks)."""
    return evaluate_spec(config, dict.fromkeys(domains, ("perplexity", "tasks")))


def job_spec(args) -> EvaluateSpec:
    """From --spec, or from --config (every part of each --domain) and --device."""
    spec = config_spec(args, EvaluateSpec, every_part, args.domain)
    if args.device:
        if args.spec:
            raise DprunerError("--spec holds the device: not with --device")
        spec = replace(spec, device=args.device)
    return spec


def run(args) -> dict:
    from dpruner.evaluation.runner import evaluate_domains
    from dpruner.preflight import check_device, local_paths

    spec = job_spec(args)
    check_device(spec.device, "--device")
    if missing := [domain for domain in args.domain if domain not in spec.domains]:
        raise DprunerError(f"--domain {', '.join(missing)}: not in the spec's domains")
    inputs = (args.model, args.config, *local_paths(spec.domains.values()))
    for out in args.out:
        check_output_file(out, args.overwrite, inputs)
    results = evaluate_domains(args.model, args.domain, spec, args.out)
    return {
        domain: {"out": out, "perplexity": result["perplexity"], "wall_s": result["wall_s"]}
        for (domain, result), out in zip(results.items(), args.out, strict=True)
    }
