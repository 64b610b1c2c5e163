"""`perplexity`: sliding-window perplexity of a model on a text source, whole, streamed block by
block or with semi-structured 2:4 kernels."""

from __future__ import annotations

import torch

from dpruner.errors import DprunerError
from dpruner.evaluation.sizing import BATCH_SIZES, evaluation_batch_size
from dpruner.io import check_output_file, write_json
from dpruner.specs import Loading, PerplexitySettings
from dpruner.steps.common import load_step_model, source_spec
from dpruner.steps.flags import (
    add_field_args,
    add_model_arg,
    add_overwrite_arg,
    add_stream_arg,
    from_args,
)


def register(subparsers) -> None:
    # The evaluation's defaults: the same perplexity by hand as in the workflow.
    default = PerplexitySettings()
    p = subparsers.add_parser(
        "perplexity", help="sliding-window perplexity of a model on a text source"
    )
    add_model_arg(p)
    add_field_args(p, Loading)
    p.add_argument(
        "--data", required=True, help="token tensor (.pt), text/json/jsonl or corpus:NAME"
    )
    p.add_argument("--template", default="{text}")
    p.add_argument("--window", type=int, default=default.window)
    p.add_argument("--stride", type=int, default=default.stride)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--bos", default=default.bos, choices=["none", "once", "window"])
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"windows per pass (default: {BATCH_SIZES['cpu']} on a CPU, "
        f"{BATCH_SIZES['cuda']} on a GPU)",
    )
    p.add_argument(
        "--semi-structured",
        metavar="KERNEL",
        help="run a 2:4-pruned model's linears as semi-structured sparse weights with this "
        "kernel (cuSPARSELt or CUTLASS; CUDA, float16 or bfloat16 only)",
    )
    add_stream_arg(p)
    p.add_argument("--out")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> dict:
    from dpruner.data import evaluation_text, load_records, text_tokens
    from dpruner.evaluation.perplexity import sliding_window_perplexity

    loading = from_args(args, Loading)
    if args.out:
        check_output_file(args.out, args.overwrite, (args.model, args.data))
    if args.semi_structured:
        from dpruner.semi_structured import check_target

        check_target(loading.device, loading.dtype, args.semi_structured)
        if args.stream_blocks:
            raise DprunerError("--semi-structured runs a whole model: not with --stream-blocks")
    model, tokenizer = load_step_model(args.model, loading, args.stream_blocks)
    if args.semi_structured:
        from dpruner.semi_structured import to_semi_structured

        to_semi_structured(model, args.semi_structured)
    if args.data.endswith(".pt"):
        ids = torch.load(args.data, weights_only=True).reshape(-1)
    else:
        records = load_records(source_spec(args.data))
        text = evaluation_text(records, args.template, f"perplexity data {args.data}")
        ids = text_tokens(text, tokenizer)
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    blocks = None
    if args.stream_blocks:
        from dpruner.streaming import CheckpointBlocks

        blocks = CheckpointBlocks(model, args.model, loading.device)
    result = sliding_window_perplexity(
        model,
        ids,
        args.window,
        args.stride,
        tokenizer.bos_token_id,
        args.bos,
        evaluation_batch_size(args.batch_size, torch.device(loading.device).type),
        blocks=blocks,
    )
    result.update(
        model=args.model,
        data=args.data,
        stream_blocks=args.stream_blocks,
        semi_structured=args.semi_structured,
    )
    if args.out:
        write_json(result, args.out)
    return result
