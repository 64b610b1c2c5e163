"""What 2:4 sparsity buys in time: PyTorch's semi-structured kernels against dense matmul.

For LLaMA-2-7B-shaped linear layers (q/k/v/o 4096 x 4096, gate/up 11008 x 4096, down 4096 x 11008)
and a decoder block of them, over token counts from 1 to several thousand: the median time of
`x @ W.T` with W dense and with W 2:4-pruned and converted by
`torch.sparse.to_sparse_semi_structured` (cuSPARSELt or CUTLASS, CUDA only). On a CPU the
conversion is refused (the error is recorded in the table); what is measured there is the dense
matmul that a 2:4-masked model runs on this CPU (its zeros are stored and multiplied like any other
weight), so a 2:4 model is exactly as fast as the dense one here.

    .venv/bin/python benchmarks/semi_structured.py [--device cuda] [--tokens 1 16 128 ...]

Writes results/tables/semi_structured.{csv,md} (results/gpu/ with --device cuda).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from dpruner.masks import nm_mask

ROOT = Path(__file__).resolve().parent.parent
# (name, out_features, in_features) of a LLaMA-2-7B decoder block's linears.
LINEARS = [
    ("q/k/v/o_proj", 4096, 4096),
    ("gate/up_proj", 11008, 4096),
    ("down_proj", 4096, 11008),
]
# A block runs q, k, v, o once each, gate and up, then down.
BLOCK = {"q/k/v/o_proj": 4, "gate/up_proj": 2, "down_proj": 1}


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the 2 smallest magnitudes of every 4 consecutive inputs zeroed."""
    return weight.masked_fill(nm_mask(weight.abs().float(), 2, 4), 0)


def median_seconds(run, repeats: int, synchronize) -> float:
    run()  # warm-up (kernel selection, allocation)
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(device: str, dtype: torch.dtype, tokens: list[int], repeats: int) -> tuple[list, str]:
    """Rows of (linear, tokens, dense ms, 2:4 ms or None, speed-up, dense GFLOP/s), and why
    the semi-structured kernel did not run where it did not."""
    from torch.sparse import to_sparse_semi_structured

    synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows, refused = [], ""
    for name, d_out, d_in in LINEARS:
        weight = two_four(torch.randn(d_out, d_in, device=device, dtype=dtype))
        try:
            sparse = to_sparse_semi_structured(weight)
        except (RuntimeError, NotImplementedError) as error:
            sparse, refused = None, f"{type(error).__name__}: {error}"
        for n in tokens:
            x = torch.randn(n, d_in, device=device, dtype=dtype)
            dense_s = median_seconds(lambda x=x, w=weight: x @ w.t(), repeats, synchronize)
            sparse_s = None
            if sparse is not None:
                # The kernels want the sparse operand first: W x^T, then transpose back.
                sparse_s = median_seconds(
                    lambda x=x, s=sparse: (s @ x.t()).t(), repeats, synchronize
                )
            rows.append(
                {
                    "linear": name,
                    "tokens": n,
                    "dense_ms": dense_s * 1e3,
                    "two_four_ms": None if sparse_s is None else sparse_s * 1e3,
                    "speedup": None if sparse_s is None else dense_s / sparse_s,
                    "dense_gflops": 2 * n * d_out * d_in / dense_s / 1e9,
                }
            )
    return rows, refused


def block_rows(rows: list[dict]) -> list[dict]:
    """A decoder block's linear time per token count: the sum over its seven linears."""
    frame = pd.DataFrame(rows)
    frame["count"] = frame["linear"].map(BLOCK)
    out = []
    for n, group in frame.groupby("tokens"):
        dense = (group["dense_ms"] * group["count"]).sum()
        sparse = (group["two_four_ms"] * group["count"]).sum(min_count=len(group))
        out.append(
            {
                "linear": "decoder block (7 linears)",
                "tokens": n,
                "dense_ms": dense,
                "two_four_ms": None if pd.isna(sparse) else sparse,
                "speedup": None if pd.isna(sparse) else dense / sparse,
                "dense_gflops": None,
            }
        )
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    # Half precision is what the kernels take; this CPU's fp16 matmul is no fair dense baseline.
    dtype_name = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)
    rows, refused = measure(args.device, dtype, args.tokens, args.repeats)
    rows += block_rows(rows)
    table = pd.DataFrame(rows)
    folder = ROOT / "results" / ("gpu" if args.device.startswith("cuda") else "tables")
    out = Path(args.out) if args.out else folder / "semi_structured"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False, float_format="%.4g")
    header = (
        f"Measured on {device_name(args.device)} (torch {torch.__version__}), {dtype_name}, "
        f"median of {args.repeats} runs after one warm-up, LLaMA-2-7B-shaped linears; command: "
        f"`python benchmarks/semi_structured.py {' '.join(sys.argv[1:])}`.\n\n"
    )
    if refused:
        header += (
            f"The 2:4 kernel did not run on this device: `{refused}`. A 2:4-masked model runs "
            "the dense matmul here, so its time is the dense column.\n\n"
        )
    out.with_suffix(".md").write_text(
        header + table.to_markdown(index=False, floatfmt=".3g", missingval="–") + "\n"
    )
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
