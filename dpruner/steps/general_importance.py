"""`general-importance`: D-Pruner's step 1, the OBS saliency G of every prunable weight on
general calibration text, as a scores file (whole, or matrix by matrix with --stream-blocks)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dpruner.io import write_json
from dpruner.specs import GeneralImportanceSpec
from dpruner.steps.common import (
    calibration_from_source,
    check_scores_outputs,
    load_step_model,
    read_spec,
)
from dpruner.steps.flags import add_model_arg, add_overwrite_arg, add_spec_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "general-importance", help="D-Pruner step 1: OBS saliency G per weight"
    )
    add_model_arg(p)
    p.add_argument(
        "--calibration",
        required=True,
        help="token tensor (.pt), text/json/jsonl file or corpus:NAME",
    )
    add_spec_args(p, GeneralImportanceSpec)
    p.add_argument("--out", required=True, help="safetensors file")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def job_spec(args) -> GeneralImportanceSpec:
    return read_spec(args, GeneralImportanceSpec)


def run(args) -> dict:
    from dpruner.methods.dpruner import general_importance
    from dpruner.score_files import save_scores, scores_provenance

    spec = job_spec(args)
    check_scores_outputs(args, (args.model, args.calibration))
    model, tokenizer = load_step_model(args.model, spec.loading, spec.stream_blocks)
    calibration = calibration_from_source(args.calibration, tokenizer, spec.rows)
    metadata = {
        **scores_provenance("general_importance", args.model, spec.sparsity),
        "calibration": args.calibration,
        "nsamples": calibration.shape[0],
        "seqlen": calibration.shape[1],
        "percdamp": 0.01,
        "normalize": spec.normalize,
    }
    options = dict(
        normalize=spec.normalize,
        batch_size=spec.rows.batch_size,
        hessian_dtype=spec.rows.hessian_dtype,
    )
    start = time.perf_counter()
    if spec.stream_blocks:
        from dpruner.models import prunable_weights, weight_matrix
        from dpruner.streaming import CheckpointBlocks, streamed_safetensors

        shapes = {n: tuple(weight_matrix(m).shape) for n, m in prunable_weights(model).items()}
        with streamed_safetensors(args.out, shapes, metadata) as sink:
            blocks = CheckpointBlocks(model, args.model, spec.loading.device)
            general_importance(
                model, calibration, spec.sparsity, **options, blocks=blocks, sink=sink
            )
        matrices = len(shapes)
    else:
        importance = general_importance(model, calibration, spec.sparsity, **options)
        save_scores(importance, args.out, metadata)
        matrices = len(importance)
    wall = time.perf_counter() - start
    summary = {"out": args.out, "matrices": matrices, "wall_s": wall}
    summary.update(peak_memory())
    write_json(summary, Path(args.out).with_suffix(".json"))
    return summary


def peak_memory() -> dict:
    from dpruner.methods.base import peak_rss_mb

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": cuda}
