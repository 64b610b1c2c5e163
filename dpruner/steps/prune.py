"""`prune`: prune a model with one method and save it with `prune.json` (what was pruned, how
sparse it is, the time and memory it took)."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from dpruner import plan
from dpruner.config import (
    kind_properties,
    method_kinds,
    schema_default,
    schema_entry,
    value_errors,
)
from dpruner.errors import DprunerError
from dpruner.io import write_json
from dpruner.specs import PruneSpec
from dpruner.steps.common import calibration_from_source, load_step_model, read_spec
from dpruner.steps.flags import add_model_arg, add_overwrite_arg, add_spec_args


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a model and save it with prune.json")
    add_model_arg(p)
    p.add_argument("--scores", help="D-Pruner importance scores (safetensors)")
    p.add_argument("--calibration", help="token tensor (.pt), text/json/jsonl file or corpus:NAME")
    p.add_argument(
        "--general-calibration",
        help="general calibration rows (same forms as --calibration): mixed into its domain rows "
        "(--domain-share) or cross-calibrated with them (--coefficient)",
    )
    add_spec_args(p, PruneSpec)
    p.add_argument(
        "--coefficient",
        type=float,
        help="cross-calibration (wanda, sparsegpt): calibrate on (1 - c) H_domain / tr + "
        "c H_general / tr, H_domain from --calibration and H_general from --general-calibration "
        "(no default)",
    )
    add_method_option_args(p)
    p.add_argument("--out", required=True)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def add_method_option_args(p) -> None:
    """The flags of `plan.method_options` (PruneSpec.options): a kind's own options and OWL's,
    named as the config's keys. Defaults are the schema's, filled in by `_method_options`, so
    that a flag given to a method that does not take it is refused rather than ignored."""

    def default(key: str) -> str:
        return f"default: {schema_default(key)}"

    p.add_argument(
        "--allocation",
        choices=["uniform", "owl"],
        help="owl: each decoder block's sparsity from its outlier ratio (OWL), averaging "
        f"--sparsity; calibrated methods and dpruner, unstructured only ({default('allocation')})",
    )
    p.add_argument("--owl-m", type=float, help=f"OWL's outlier threshold M ({default('owl_m')})")
    p.add_argument(
        "--owl-lambda", type=float, help=f"OWL's spread lambda ({default('owl_lambda')})"
    )
    for flag, kind, key in _kind_flags():
        p.add_argument(flag, **_kind_flag_argument(kind, key))


def _kind_flags() -> list[tuple[str, str, str]]:
    """(flag, kind, option) of every kind's own options (`plan.kind_options`), one flag per option
    name: a kind that shares a name with another shares its flag, so it must share its type."""
    flags = {}
    for kind in method_kinds():
        for key in plan.kind_options(kind):
            flags.setdefault(_flag(key), (kind, key))
    return [(flag, kind, key) for flag, (kind, key) in flags.items()]


def _kind_flag_argument(kind: str, key: str) -> dict:
    """argparse's arguments for a kind's option, from its schema entry: the type, and the help
    from the first sentence of its description with the schema's default."""
    entry = schema_entry(plan.kind_options(kind)[key])
    about = re.split(r"[.;] ", entry.get("description", ""))[0].replace("%", "%%")
    argument = {"help": f"{kind}: {about} (default: {entry['default']})"}
    if entry.get("type") == "boolean":
        argument["action"] = argparse.BooleanOptionalAction
    elif entry.get("type") == "array":
        argument["nargs"] = "*"
    elif entry.get("type") in SCHEMA_TYPES:
        argument["type"] = SCHEMA_TYPES[entry["type"]]
    return argument


# How a flag reads a value of a kind's option of this schema type (strings stay strings).
SCHEMA_TYPES = {"integer": int, "number": float}


def job_spec(args) -> PruneSpec:
    """From --spec, or from the flags, the method's options (`_method_options`) included."""
    if args.spec:
        given = [flag for flag in _option_flags() if getattr(args, _dest(flag)) is not None]
        if given:
            raise DprunerError(f"--spec holds every option: not with {', '.join(given)}")
        return read_spec(args, PruneSpec)
    if args.method is None:
        raise DprunerError("give --method (or --spec JSON)")
    _check_method(args.method)
    return read_spec(args, PruneSpec, options=_method_options(args))


def _check_method(method: str) -> None:
    from dpruner.methods import PRUNERS

    if method not in PRUNERS:
        raise DprunerError(f"unknown method '{method}'; choose one of {', '.join(PRUNERS)}")


def run(args) -> dict:
    from dpruner.fingerprint import model_fingerprint
    from dpruner.io import check_output_folder
    from dpruner.masks import SparsitySpec
    from dpruner.methods import PRUNERS
    from dpruner.models import measured_sparsity, save_model

    job = job_spec(args)
    _check_method(job.method)
    method_class = PRUNERS[job.method]
    # Checked before the model loads; save_model checks again before it replaces anything.
    check_output_folder(args.out, args.overwrite, (args.model,))
    spec = SparsitySpec.parse(job.sparsity, job.pattern, job.group or method_class.default_group)
    own = job.options
    if own.get("allocation") == "owl":
        from dpruner.methods.owl import OwlAllocation

        OwlAllocation.check_plan(job.method, spec, job.stream_blocks)
    kind_options = {key: own[key] for key in plan.kind_options(job.method)}
    pruner = method_class.from_options(kind_options, _offered(args, job, method_class))
    # OWL measures its outlier ratios on calibration rows, even for a method that has none.
    calibrated = pruner.needs_calibration or pruner.allocation is not None
    if calibrated and not args.calibration:
        needs = f"--method {job.method}" if pruner.needs_calibration else "--allocation owl"
        raise DprunerError(f"{needs} needs --calibration SOURCE")
    _check_mix_args(args, job, calibrated)
    start = time.perf_counter()
    model, tokenizer = load_step_model(args.model, job.loading, job.stream_blocks)
    calibration, mix = None, None
    if calibrated:
        calibration, mix = _calibration(args, job, tokenizer)
    if "coefficient" in own:
        from dpruner.methods.cross import CrossCalibration

        # The general rows need the tokenizer, so they join the pruner once it is loaded.
        pruner.cross = CrossCalibration(
            calibration_from_source(args.general_calibration, tokenizer, job.rows),
            own["coefficient"],
        )
    sources = (args.model, args.scores, args.calibration, args.general_calibration)
    inputs = tuple(p for p in sources if p and Path(p).exists())
    if job.stream_blocks:
        from dpruner.io import output_folder
        from dpruner.streaming import CheckpointBlocks

        with output_folder(args.out, args.overwrite, inputs) as tmp:
            blocks = CheckpointBlocks(model, args.model, job.loading.device, out_dir=tmp)
            result = pruner.prune(model, calibration, spec, blocks=blocks)
            blocks.finish(tokenizer)
        measured = blocks.measured_sparsity()
    else:
        result = pruner.prune(model, calibration, spec)
        save_model(model, tokenizer, args.out, args.overwrite, inputs)
        measured = measured_sparsity(model)
    report = {
        **result.to_dict(),
        "model": args.model,
        # The dense model it was pruned from (dpruner.fingerprint), as scores files record it.
        "model_fingerprint": model_fingerprint(args.model),
        "calibration": args.calibration,
        "calibration_shape": list(calibration.shape) if calibration is not None else None,
        "calibration_mix": mix,
        "general_calibration": args.general_calibration,
        # The method's own options as the workflow plans them (dpruner.plan.method_options).
        "options": own,
        "measured": measured,
        "stream_blocks": job.stream_blocks,
        "total_wall_s": time.perf_counter() - start,
    }
    write_json(report, Path(args.out) / "prune.json")
    return {
        k: report[k]
        for k in ("method", "sparsity_linear", "sparsity_total", "wall_s", "peak_rss_mb")
    }


def _method_options(args) -> dict:
    """`plan.method_options` from the flags, the schema's defaults for those not given; a flag
    of another kind, a value the kind's schema entry refuses, OWL's options without
    --allocation owl, and what OWL or cross-calibration cannot do are refused before the model
    loads."""
    entry = {"kind": args.method}
    takes = plan.kind_options(args.method)
    for flag, kind, key in _kind_flags():
        if getattr(args, key) is None:
            continue
        if key not in takes:
            raise DprunerError(f"{flag} is an option of --method {kind}")
        problems = value_errors(takes[key], getattr(args, key))
        if problems:
            raise DprunerError(f"{flag}: {problems[0]}")
        entry[key] = getattr(args, key)
    owl = {key: getattr(args, key) for key in plan.OWL_OPTIONS if getattr(args, key) is not None}
    if owl and args.allocation != "owl":
        raise DprunerError(f"{_flag(next(iter(owl)))} needs --allocation owl")
    if args.allocation == "owl":
        if "allocation" not in kind_properties(args.method):
            raise DprunerError(
                "--allocation owl is for calibrated methods and dpruner, "
                f"not --method {args.method}"
            )
        entry |= {"allocation": "owl", **owl}
    if args.coefficient is not None:
        if "coefficient" not in kind_properties(args.method):
            takers = [kind for kind in method_kinds() if "coefficient" in kind_properties(kind)]
            raise DprunerError(
                f"--coefficient cross-calibrates {' and '.join(takers)}, not --method {args.method}"
            )
        entry |= {"calibration": "cross", "coefficient": args.coefficient}
    return plan.method_options(entry)


def _option_flags() -> list[str]:
    """The flags of `PruneSpec.options`."""
    owl = [_flag(key) for key in ("allocation", *plan.OWL_OPTIONS, "coefficient")]
    return [*owl, *(flag for flag, _, _ in _kind_flags())]


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _flag(key: str) -> str:
    return f"--{key.replace('_', '-')}"


def _offered(args, job: PruneSpec, method_class) -> dict:
    """What the step offers every method's `from_options` (each takes those its constructor
    does), from the spec; options no method of this kind uses are refused."""
    offered = {"batch_size": job.rows.batch_size, "hessian_dtype": job.rows.hessian_dtype}
    if job.options.get("allocation") == "owl":
        from dpruner.methods.owl import OwlAllocation

        offered["allocation"] = OwlAllocation(job.options["owl_m"], job.options["owl_lambda"])
    if job.quantize_bits is not None:
        from dpruner.quantize import QuantSpec

        # Round-to-nearest after the mask; SparseGPT quantizes inside its sweep instead.
        offered["quantize"] = QuantSpec(job.quantize_bits, job.group_size, job.symmetric)
    elif job.group_size is not None or job.symmetric:
        raise DprunerError("--group-size and --symmetric need --quantize-bits")
    if job.quantize_bits is not None and job.stream_blocks:
        raise DprunerError("--quantize-bits does not work with --stream-blocks yet")
    if method_class.masks_by_scores:
        from dpruner.score_files import SCORE_KINDS, check_scores

        if not args.scores:
            raise DprunerError(f"--method {job.method} needs --scores FILE (from `domain-scores`)")
        check_scores(args.scores, "--scores", args.model, SCORE_KINDS, job.sparsity)
        offered |= {"scores_path": args.scores, "reconstruct": job.reconstruct}
    elif job.reconstruct:
        raise DprunerError("--reconstruct repairs a D-Pruner mask: it needs --method dpruner")
    return offered


def _check_mix_args(args, job: PruneSpec, calibrated: bool) -> None:
    """Mixing flags that go together, before the model loads."""
    combined = [x for x in (job.domain_share, job.options.get("coefficient")) if x is not None]
    if (args.general_calibration is None) == bool(combined) or len(combined) > 1:
        raise DprunerError(
            "--general-calibration goes together with one of --domain-share (mixed rows) and "
            "--coefficient (cross-calibration)"
        )
    if args.general_calibration and not calibrated:
        method = f"{job.method} without --reconstruct" if job.method == "dpruner" else job.method
        raise DprunerError(
            f"--general-calibration mixes into the calibration rows, but --method {method} "
            "calibrates on none"
        )


def _calibration(args, job: PruneSpec, tokenizer) -> tuple[torch.Tensor, dict | None]:
    """The calibration rows, and what the mix holds when general rows are mixed in."""
    from dpruner.data.mixing import mix_calibration

    calibration = calibration_from_source(args.calibration, tokenizer, job.rows)
    if job.domain_share is None:
        return calibration, None
    general = calibration_from_source(args.general_calibration, tokenizer, job.rows)
    mix = mix_calibration(general, calibration, job.domain_share, job.rows.seed)
    summary = {
        "general_calibration": args.general_calibration,
        "domain_share": job.domain_share,
        "seed": job.rows.seed,
        **mix.summary(),
    }
    return mix.tokens, summary
