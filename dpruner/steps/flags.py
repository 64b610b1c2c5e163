"""Flags that several steps take, written once."""

from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="a config file (checked against the schema)")
    group.add_argument(
        "--config-json", help="the config slice the step reads, as JSON (from the workflow)"
    )


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if an earlier dpruner step wrote it (never a file or folder of "
        "yours, never an input)",
    )


def add_stream_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream-blocks",
        action="store_true",
        help="never load the whole model: bring one decoder block at a time from the safetensors"
        " files and free it (a pruned block is written) when the walk is done with it"
        " (docs/streaming.md)",
    )


def add_calibration_args(parser: argparse.ArgumentParser) -> None:
    from dpruner.config import schema_default
    from dpruner.hessian import HESSIAN_DTYPES

    parser.add_argument(
        "--calibration", help="token tensor (.pt), text/json/jsonl file or corpus:NAME"
    )
    parser.add_argument("--template", default="{text}", help="record template for text sources")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="calibration sequences per forward"
    )
    parser.add_argument(
        "--hessian-dtype",
        choices=HESSIAN_DTYPES,
        default=schema_default("hessian_dtype"),
        help="auto: on CUDA, X^T X in the bf16/fp16 activations' dtype with fp32 output; "
        "float32: in fp32 everywhere (SparseGPT, general importance, --reconstruct)",
    )
