"""`prune`: prune a model with one method and save it with `prune.json` (what was pruned, how
sparse it is, the time and memory it took)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dpruner.errors import DprunerError
from dpruner.io import write_json
from dpruner.steps.common import calibration_from_source, load_step_model
from dpruner.steps.flags import (
    add_calibration_args,
    add_model_args,
    add_overwrite_arg,
    add_stream_arg,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a model and save it with prune.json")
    add_model_args(p)
    p.add_argument("--method", required=True)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4 or 4:8")
    p.add_argument("--group", choices=["matrix", "row", "block"], help="default: the method's")
    p.add_argument("--scores", help="D-Pruner importance scores (safetensors)")
    p.add_argument(
        "--reconstruct",
        action="store_true",
        help="dpruner: keep the mask from --scores and repair the kept weights with SparseGPT's "
        "OBS sweep on --calibration",
    )
    p.add_argument(
        "--general-calibration",
        help="general calibration rows mixed into --calibration's domain rows (same forms)",
    )
    p.add_argument(
        "--domain-share",
        type=float,
        help="with --general-calibration: the share of domain rows in the mixed set",
    )
    p.add_argument(
        "--quantize-bits",
        type=int,
        help="also quantize the kept weights to this many bits: round-to-nearest for magnitude, "
        "wanda and dpruner, SparseGPT's joint sparse + GPTQ sweep for sparsegpt",
    )
    p.add_argument(
        "--group-size", type=int, help="input columns per quantization grid (default: one per row)"
    )
    p.add_argument("--symmetric", action="store_true", help="symmetric grids (default: asymmetric)")
    add_calibration_args(p)
    add_stream_arg(p)
    p.add_argument("--out", required=True)
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from dpruner.fingerprint import model_fingerprint
    from dpruner.io import check_output_folder
    from dpruner.masks import SparsitySpec
    from dpruner.methods import PRUNERS, get_pruner
    from dpruner.models import measured_sparsity, save_model

    method_class = PRUNERS.get(args.method)
    if method_class is None:
        raise DprunerError(f"unknown method '{args.method}'; choose one of {', '.join(PRUNERS)}")
    # Checked before the model loads; save_model checks again before it replaces anything.
    check_output_folder(args.out, args.overwrite, (args.model,))
    spec = SparsitySpec.parse(args.sparsity, args.pattern, args.group or method_class.default_group)
    pruner = get_pruner(args.method, **_pruner_options(args))
    if pruner.needs_calibration and not args.calibration:
        raise DprunerError(f"--method {args.method} needs --calibration SOURCE")
    _check_mix_args(args, pruner.needs_calibration)
    start = time.perf_counter()
    model, tokenizer = load_step_model(args)
    calibration, mix = None, None
    if pruner.needs_calibration:
        calibration, mix = _calibration(args, tokenizer)
    sources = (args.model, args.scores, args.calibration, args.general_calibration)
    inputs = tuple(p for p in sources if p and Path(p).exists())
    if args.stream_blocks:
        from dpruner.io import output_folder
        from dpruner.streaming import CheckpointBlocks

        with output_folder(args.out, args.overwrite, inputs) as tmp:
            blocks = CheckpointBlocks(model, args.model, args.device, out_dir=tmp)
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
        "measured": measured,
        "stream_blocks": args.stream_blocks,
        "total_wall_s": time.perf_counter() - start,
    }
    write_json(report, Path(args.out) / "prune.json")
    return {
        k: report[k]
        for k in ("method", "sparsity_linear", "sparsity_total", "wall_s", "peak_rss_mb")
    }


def _pruner_options(args) -> dict:
    """The method's options from the flags, refusing flags the method does not take."""
    options = {}
    if args.quantize_bits is not None:
        from dpruner.quantize import QuantSpec

        # Round-to-nearest after the mask; SparseGPT quantizes inside its sweep instead.
        options["quantize"] = QuantSpec(args.quantize_bits, args.group_size, args.symmetric)
    elif args.group_size is not None or args.symmetric:
        raise DprunerError("--group-size and --symmetric need --quantize-bits")
    if args.quantize_bits is not None and args.stream_blocks:
        raise DprunerError("--quantize-bits does not work with --stream-blocks yet")
    if args.method in ("wanda", "sparsegpt", "dpruner"):
        options["batch_size"] = args.batch_size
    if args.method == "dpruner":
        from dpruner.score_files import SCORE_KINDS, check_scores

        if not args.scores:
            raise DprunerError("--method dpruner needs --scores FILE (from `domain-scores`)")
        check_scores(args.scores, "--scores", args.model, SCORE_KINDS, args.sparsity)
        options["scores_path"] = args.scores
        options["reconstruct"] = args.reconstruct
    if args.method in ("sparsegpt", "dpruner"):
        options["hessian_dtype"] = args.hessian_dtype
    elif args.reconstruct:
        raise DprunerError("--reconstruct repairs a D-Pruner mask: it needs --method dpruner")
    return options


def _check_mix_args(args, calibrated: bool) -> None:
    """Mixing flags that go together, before the model loads."""
    if (args.general_calibration is None) != (args.domain_share is None):
        raise DprunerError("--general-calibration and --domain-share go together")
    if args.general_calibration and not calibrated:
        method = f"{args.method} without --reconstruct" if args.method == "dpruner" else args.method
        raise DprunerError(
            f"--general-calibration mixes into the calibration rows, but --method {method} "
            "calibrates on none"
        )


def _calibration(args, tokenizer) -> tuple[torch.Tensor, dict | None]:
    """The calibration rows, and what the mix holds when general rows are mixed in."""
    from dpruner.data.mixing import mix_calibration

    def rows(source: str) -> torch.Tensor:
        return calibration_from_source(
            source, tokenizer, args.nsamples, args.seqlen, args.seed, args.template
        )

    calibration = rows(args.calibration)
    if not args.general_calibration:
        return calibration, None
    mix = mix_calibration(rows(args.general_calibration), calibration, args.domain_share, args.seed)
    summary = {
        "general_calibration": args.general_calibration,
        "domain_share": args.domain_share,
        "seed": args.seed,
        **mix.summary(),
    }
    return mix.tokens, summary
