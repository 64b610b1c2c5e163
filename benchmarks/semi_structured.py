"""What 2:4 sparsity buys, timed as a pruned model runs it (CUDA only).

The call timed is the model's own: an `nn.Linear` whose weight is a semi-structured tensor
(dpruner.semi_structured, as PyTorch's semi-structured tutorial converts), called as the model
calls it, against the same `nn.Linear` with the 2:4-masked weight stored dense. Per linear shape
over token counts, and for whole randomly initialised models: the prefill latency of one sequence
and the decode latency per token with the KV cache, SmolLM2-135M-shaped (30 blocks) and
LLaMA-2-7B-shaped (a few blocks), in fp16 and bf16, with each kernel (cuSPARSELt, CUTLASS); a
kernel that refuses this GPU is named with its error.

    python benchmarks/semi_structured.py [--quick] [--layers 4] [--out results/gpu/semi_structured]

Writes results/gpu/semi_structured.{csv,md}: GPU, torch version and command in the header.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dpruner.gpu_tables import provenance, write_gpu_table
from dpruner.masks import nm_mask
from dpruner.models import prunable_weights
from dpruner.semi_structured import KERNELS, convert_linear, kernel_converter, to_semi_structured

ROOT = Path(__file__).resolve().parent.parent
# Model configurations (LlamaConfig keys); the LLaMA-2-7B shape keeps `--layers` blocks.
SHAPES = {
    "SmolLM2-135M": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        num_hidden_layers=30,
        vocab_size=49152,
    ),
    "LLaMA-2-7B": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the 2 smallest magnitudes of every 4 consecutive inputs zeroed."""
    return weight.masked_fill(nm_mask(weight.abs().float(), 2, 4), 0)


def median_ms(run, repeats: int) -> float:
    run()  # warm-up: kernel selection, allocation
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def linear_pair(d_out: int, d_in: int, dtype, device, convert) -> tuple[nn.Linear, nn.Linear]:
    """(the 2:4-masked linear stored dense, the same linear holding `convert`'s weight)."""
    dense = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
    dense.weight.copy_(two_four(dense.weight))
    sparse = copy.deepcopy(dense)
    convert_linear(sparse, convert)
    return dense, sparse


def linear_shapes(config: dict) -> list[tuple[int, int]]:
    """The distinct (d_out, d_in) of a LLaMA block's seven linears."""
    h, i = config["hidden_size"], config["intermediate_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    return list(dict.fromkeys([(h, h), (kv, h), (i, h), (h, i)]))


def linear_rows(shape, config, dtype_name, kernel, tokens, repeats, convert) -> list[dict]:
    dtype = DTYPES[dtype_name]
    rows = []
    for d_out, d_in in linear_shapes(config):
        dense, sparse = linear_pair(d_out, d_in, dtype, "cuda", convert)
        for n in tokens:
            x = torch.randn(n, d_in, device="cuda", dtype=dtype)
            rows.append(
                timed_row(
                    shape,
                    f"linear {d_out}x{d_in}",
                    dtype_name,
                    kernel,
                    n,
                    lambda x=x, dense=dense: dense(x),
                    lambda x=x, sparse=sparse: sparse(x),
                    repeats,
                )
            )
    return rows


def timed_row(shape, part, dtype_name, kernel, tokens, dense_run, sparse_run, repeats) -> dict:
    dense_ms, sparse_ms = median_ms(dense_run, repeats), median_ms(sparse_run, repeats)
    return {
        "shape": shape,
        "part": part,
        "dtype": dtype_name,
        "kernel": kernel,
        "tokens": tokens,
        "dense_ms": dense_ms,
        "two_four_ms": sparse_ms,
        "speedup": dense_ms / sparse_ms,
    }


def pruned_model(config: dict, dtype):
    """A random LLaMA-architecture model of `config`, every prunable linear 2:4-masked."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).to(device="cuda", dtype=dtype).eval()
    with torch.no_grad():
        for module in prunable_weights(model).values():
            module.weight.copy_(two_four(module.weight))
    return model


@torch.no_grad()
def decode(model, prompt: torch.Tensor, steps: int) -> None:
    out = model(prompt, use_cache=True)
    for _ in range(steps):
        token = out.logits[:, -1:].argmax(-1)
        out = model(token, past_key_values=out.past_key_values, use_cache=True)


def model_rows(shape, config, dtype_name, kernel, args) -> list[dict]:
    """Prefill latency of one sequence of each length and decode latency per token."""
    dense = pruned_model(config, DTYPES[dtype_name])
    sparse = copy.deepcopy(dense)
    to_semi_structured(sparse, kernel)
    rows = []
    for n in args.prefill:
        ids = torch.randint(0, config["vocab_size"], (1, n), device="cuda")
        rows.append(
            timed_row(
                shape,
                "model prefill",
                dtype_name,
                kernel,
                n,
                lambda ids=ids: dense(ids, use_cache=False),
                lambda ids=ids: sparse(ids, use_cache=False),
                args.repeats,
            )
        )
    prompt = torch.randint(0, config["vocab_size"], (1, args.decode_prompt), device="cuda")
    with_steps, prompt_only = (
        timed_row(
            shape,
            "decode",
            dtype_name,
            kernel,
            1,
            lambda s=steps: decode(dense, prompt, s),
            lambda s=steps: decode(sparse, prompt, s),
            args.repeats,
        )
        for steps in (args.decode_steps, 0)
    )
    per_token = {
        key: (with_steps[key] - prompt_only[key]) / args.decode_steps
        for key in ("dense_ms", "two_four_ms")
    }
    rows.append(
        {
            **with_steps,
            "part": f"model decode per token (prompt {args.decode_prompt})",
            **per_token,
            "speedup": per_token["dense_ms"] / per_token["two_four_ms"],
        }
    )
    return rows


@torch.no_grad()
def measure(args) -> tuple[list[dict], dict[str, str]]:
    """Every row, and for each kernel that refused this GPU its error."""
    rows, refused = [], {}
    for kernel in KERNELS:
        convert = kernel_converter(kernel)
        for dtype_name in DTYPES:
            try:
                convert(two_four(torch.randn(128, 128, device="cuda", dtype=DTYPES[dtype_name])))
            except (RuntimeError, NotImplementedError) as error:
                refused[f"{kernel} {dtype_name}"] = f"{type(error).__name__}: {error}"
                continue
            for shape, config in SHAPES.items():
                config = {"num_hidden_layers": args.layers, **config}
                rows += linear_rows(
                    shape, config, dtype_name, kernel, args.tokens, args.repeats, convert
                )
                rows += model_rows(shape, config, dtype_name, kernel, args)
    return rows, refused


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 512, 2048, 8192])
    parser.add_argument("--prefill", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--decode-prompt", type=int, default=128)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4, help="blocks of the LLaMA-2-7B shape")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="bounded sizes for `make gpu-check` (about a minute)"
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu" / "semi_structured"))
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.prefill, args.decode_steps, args.layers, args.repeats = (
            [1, 128, 2048, 8192],
            [512],
            16,
            2,
            5,
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "error: the 2:4 kernels (cuSPARSELt, CUTLASS) run on CUDA only and this machine has "
            "no CUDA device; a 2:4-masked model runs the dense matmul on a CPU (same time as "
            "dense)",
            file=sys.stderr,
        )
        return 2
    rows, refused = measure(args)
    header = [
        *provenance(),
        "call timed: `nn.Linear` holding the semi-structured weight (the model's own call) "
        "against the same linear with the 2:4-masked weight stored dense; median of "
        f"{args.repeats} runs after one warm-up; speedup = dense / 2:4",
        f"models: random weights, SmolLM2-135M-shaped (30 blocks) and LLaMA-2-7B-shaped "
        f"({args.layers} blocks), batch 1; decode per token = (prompt + "
        f"{args.decode_steps} steps - prompt alone) / {args.decode_steps}",
        *(f"kernel refused, {name}: {error}" for name, error in refused.items()),
    ]
    print(write_gpu_table(Path(args.out), "2:4 semi-structured against dense", header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
