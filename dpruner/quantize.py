"""Weight quantization for pruning + quantization: round-to-nearest grids and their stored size.

Pure tensor functions in d_out x d_in layout. A *grid* is one scale s and one integer zero point z
per output row (`group_size=None`) or per row and group of `group_size` consecutive input columns
(the last group narrower when it does not divide d_in). A weight w gets the b-bit code

    c = clamp(round(w / s) + z, 0, 2^b - 1)      and dequantizes to     (c - z) * s.

- Asymmetric (default): the range [min(w_min, 0), max(w_max, 0)] of the group is cut into
  2^b - 1 steps, z = round(-min / s). The range always contains 0 and z is an integer in
  [0, 2^b - 1], so 0 is a grid point: zeros stay exactly zero (a pruned weight stays pruned).
- Symmetric: s = max|w| / (2^(b-1) - 1), z = 2^(b-1) for every group (codes 1 .. 2^b - 1 are
  used, so +max|w| and -max|w| are both representable; the code 0 is never produced).

Scales are rounded *up* to the nearest fp16 value, so the stored format below reproduces the
dequantized weights exactly; an all-zero group gets s = 1. Every weight then lies within s/2 of
its dequantized value (no clipping error).

`quantize_rtn` is round-to-nearest on the given weights; SparseGPT's joint sparse + GPTQ-style
sweep (`dpruner.methods.sparsegpt.sparsegpt_sweep`, `quant=`) uses the same grids, computed per
group from the running weights, and `quantize_to_grid` one column at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from dpruner.errors import DprunerError

FORMATS = ("dense_codes", "bitmap")
SCALE_BYTES = 2  # fp16 scale and fp16 zero point per group
DENSE_BYTES = 2  # 16-bit reference for unquantized parameters


@dataclass(frozen=True)
class QuantSpec:
    """b-bit weights, one grid per row (`group_size=None`) or per row and input-column group."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False

    def __post_init__(self):
        if not 2 <= self.bits <= 8:
            raise DprunerError(f"quantization bits must lie in 2..8, got {self.bits}")
        if self.group_size is not None and self.group_size < 1:
            raise DprunerError(f"quantization group size must be >= 1, got {self.group_size}")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    @property
    def label(self) -> str:
        groups = f"g{self.group_size}" if self.group_size else "row"
        return f"w{self.bits}-{groups}-{'sym' if self.symmetric else 'asym'}"


class Quantized(NamedTuple):
    """Codes (uint8, d_out x d_in) and fp32 scales and zero points (d_out x groups)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def group_bounds(d_in: int, group_size: int | None) -> list[tuple[int, int]]:
    """Column ranges [c0, c1) of the groups; one group per row when `group_size` is None."""
    size = group_size or d_in
    return [(c0, min(c0 + size, d_in)) for c0 in range(0, d_in, size)]


def _fp16_ceil(x: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= x (x > 0), as fp32."""
    half = x.to(torch.float16)
    up = torch.nextafter(half, torch.full_like(half, math.inf))
    half = torch.where(half.float() < x, up, half)
    return half.float()


def grid_params(
    weights: torch.Tensor, bits: int, symmetric: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point per row of `weights` (d_out x k), in fp32 (algorithm above)."""
    w = weights.float()
    maxq = 2**bits - 1
    if symmetric:
        span = w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
    else:
        low = w.amin(dim=1).clamp(max=0)
        span = (w.amax(dim=1).clamp(min=0) - low) / maxq
    scale = _fp16_ceil(torch.where(span > 0, span, torch.ones_like(span)))
    if symmetric:
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        zero = torch.round(-low / scale).clamp(0, maxq)
    return scale, zero


def quantize_to_grid(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
) -> torch.Tensor:
    """Codes of `w` on the grid (scale, zero broadcast against it), as fp32 integers."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def quantize_rtn(
    weight: torch.Tensor, bits: int = 4, group_size: int | None = None, symmetric: bool = False
) -> Quantized:
    """Round-to-nearest quantization of `weight` (d_out x d_in) with per-row or per-group grids."""
    spec = QuantSpec(bits, group_size, symmetric)
    w = weight.detach().float()
    d_out, d_in = w.shape
    bounds = group_bounds(d_in, group_size)
    scales = torch.empty(d_out, len(bounds), device=w.device)
    zeros = torch.empty_like(scales)
    codes = torch.empty(d_out, d_in, dtype=torch.uint8, device=w.device)
    for g, (c0, c1) in enumerate(bounds):
        scale, zero = grid_params(w[:, c0:c1], bits, symmetric)
        scales[:, g], zeros[:, g] = scale, zero
        q = quantize_to_grid(w[:, c0:c1], scale.unsqueeze(1), zero.unsqueeze(1), spec.maxq)
        codes[:, c0:c1] = q.to(torch.uint8)
    return Quantized(codes, scales, zeros)


def _per_column(values: torch.Tensor, d_in: int, group_size: int | None) -> torch.Tensor:
    """Expand d_out x groups to d_out x d_in."""
    widths = torch.tensor([c1 - c0 for c0, c1 in group_bounds(d_in, group_size)])
    return values.repeat_interleave(widths.to(values.device), dim=1)


def dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int | None = None,
) -> torch.Tensor:
    """fp32 weights (c - z) * s of `quantize_rtn`'s output (the same `group_size`)."""
    d_in = codes.shape[1]
    expected = len(group_bounds(d_in, group_size))
    if scales.shape[1] != expected or zeros.shape != scales.shape:
        raise DprunerError(
            f"{expected} groups per row for d_in={d_in} and group size {group_size}, "
            f"but scales have shape {tuple(scales.shape)} and zeros {tuple(zeros.shape)}"
        )
    s = _per_column(scales.float(), d_in, group_size)
    z = _per_column(zeros.float(), d_in, group_size)
    return (codes.float() - z) * s


def fake_quantize(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """quantize_rtn then dequantize: the weights a quantized model computes with, in fp32."""
    q = quantize_rtn(weight, spec.bits, spec.group_size, spec.symmetric)
    return dequantize(*q, spec.group_size)


def stored_bytes(
    d_out: int,
    d_in: int,
    spec: QuantSpec | None,
    storage: str = "dense_codes",
    nonzeros: int | None = None,
) -> int:
    """Bytes to store one quantized (and possibly sparse) d_out x d_in matrix.

    Both formats store, per row and group, an fp16 scale and (asymmetric only; symmetric zero
    points are the constant 2^(b-1)) an fp16 zero point, and the b-bit codes packed without
    padding across the whole matrix (4-bit: two codes per byte), rounded up to whole bytes:
    - `dense_codes`: every weight's code, pruned ones included (a pruned weight is the code of 0).
      No sparse format, so sparsity saves nothing: the size of the dense quantized matrix.
    - `bitmap`: a 1-bit-per-weight occupancy bitmap plus the codes of the `nonzeros` non-zero
      weights only (a simple sparse format; 50 % sparse 4-bit costs 1 + 2 = 3 bits per weight).
    `spec=None` is an unquantized matrix: 16-bit values in place of codes, no scales (50 % sparse
    in the bitmap format: 1 + 8 bits per weight).
    Biases are not counted (they stay dense, with the other unquantized parameters).
    """
    if storage not in FORMATS:
        raise DprunerError(f"storage format must be one of {FORMATS}, got '{storage}'")
    bits = spec.bits if spec is not None else DENSE_BYTES * 8
    scales = 0
    if spec is not None:
        groups = d_out * len(group_bounds(d_in, spec.group_size))
        scales = groups * SCALE_BYTES * (1 if spec.symmetric else 2)
    numel = d_out * d_in
    if storage == "dense_codes":
        return math.ceil(numel * bits / 8) + scales
    if nonzeros is None:
        raise DprunerError("the bitmap format needs the number of non-zero weights")
    return math.ceil(numel / 8) + math.ceil(nonzeros * bits / 8) + scales


def model_storage(
    matrices: dict[str, torch.Tensor], total_parameters: int, spec: QuantSpec | None
) -> dict:
    """Stored size of a model whose prunable `matrices` (d_out x d_in) are quantized by `spec`
    (`None`: kept at 16 bits), in both formats of `stored_bytes`.

    The other parameters (embeddings, norms, biases, an untied `lm_head`; a tied embedding once)
    count at 16 bits. `dense_16bit_bytes` is the unpruned, unquantized 16-bit model.
    """
    linear = sum(w.numel() for w in matrices.values())
    rest = (total_parameters - linear) * DENSE_BYTES
    dense = sum(stored_bytes(*w.shape, spec) for w in matrices.values())
    bitmap = sum(
        stored_bytes(*w.shape, spec, "bitmap", int((w != 0).sum())) for w in matrices.values()
    )
    if spec is None:
        values = "16-bit values"
    else:
        zero_point = "" if spec.symmetric else " and zero point"
        values = f"{spec.bits}-bit codes packed, fp16 scale{zero_point} per group"
    return {
        "format": f"{values}; other parameters 16-bit",
        "prunable_bytes_dense_codes": dense,
        "prunable_bytes_bitmap": bitmap,
        "other_bytes_16bit": rest,
        "total_bytes_dense_codes": dense + rest,
        "total_bytes_bitmap": bitmap + rest,
        "dense_16bit_bytes": (linear * DENSE_BYTES) + rest,
    }
