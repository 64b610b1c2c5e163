"""SparseGPT: OBS column sweep with adaptive per-block masks (docs/methods.md#sparsegpt).

`sparsegpt_sweep` is the pure per-matrix solver; `SparseGPTPruner` feeds it Hessians from the
shared layer-sequential engine. D-Pruner's general importance is the saliency this sweep records
at the start of every column block (`saliency=` argument). With `quant=` the sweep is SparseGPT's
joint sparse + quantized one (SparseGPT paper, Algorithm 1 with GPTQ-style quantization). With
`mask=` the sweep keeps a mask chosen elsewhere and only repairs the kept weights (D-Pruner with
reconstruction: `SparseGPTPruner(fixed_mask=...)`). With `cross=CrossCalibration(...)` the sweep
runs on a combination of the domain's and the general text's Hessians (dpruner/methods/cross.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dpruner.calibration import LayerStatistics, layer_sequential
from dpruner.errors import DprunerError
from dpruner.hessian import check_hessian_dtype, hessian_product_dtype
from dpruner.masks import SparsitySpec, check_mask, lowest_k, nm_mask
from dpruner.methods.base import Pruner
from dpruner.models import weight_matrix
from dpruner.quantize import Quantized, QuantSpec, grid_params, group_bounds, quantize_to_grid

if TYPE_CHECKING:
    from dpruner.methods.cross import CrossCalibration
    from dpruner.methods.owl import OwlAllocation

log = logging.getLogger(__name__)


class HessianStatistics(LayerStatistics):
    """H = (2/N) sum_n X_n X_n^T in fp32, kept as a running mean over sequences."""

    def __init__(self, d_in: int, device, hessian_dtype: str = "auto"):
        self.hessian = torch.zeros(d_in, d_in, dtype=torch.float32, device=device)
        self.n_sequences = 0
        self.hessian_dtype = hessian_dtype

    def add_batch(self, inputs: torch.Tensor, n_sequences: int) -> None:
        total = self.n_sequences + n_sequences
        self.hessian *= self.n_sequences / total
        dtype = hessian_product_dtype(inputs.device.type, inputs.dtype, self.hessian_dtype)
        if dtype == torch.float32:
            scaled = inputs.float() * math.sqrt(2 / total)
            self.hessian += scaled.t() @ scaled
        else:
            # Scaled after the product: scaling bf16 inputs would round them once more.
            product = torch.mm(inputs.t(), inputs, out_dtype=torch.float32)
            self.hessian.add_(product, alpha=2 / total)
        self.n_sequences = total


class DampingError(DprunerError):
    pass


@dataclass
class SweepResult:
    weight: torch.Tensor
    mask: torch.Tensor
    damping: float
    loss: float
    quantized: Quantized | None = None


def inverse_hessian_factor(
    hessian: torch.Tensor, percdamp: float, max_damp: float, where: str
) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + p mean(diag H) I)^-1; p grows tenfold while factoring fails."""
    mean_diag = torch.mean(torch.diag(hessian))
    damp = percdamp
    while True:
        damped = hessian.clone()
        damped.diagonal().add_(damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, damp
        if damp * 10 > max_damp * (1 + 1e-9):
            raise DampingError(
                f"{where}: the Hessian is not positive definite even with damping {damp}; "
                "use more calibration samples (nsamples) or longer sequences (seqlen)"
            )
        damp *= 10


def sparsegpt_sweep(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: SparsitySpec,
    percdamp: float = 0.01,
    max_damp: float = 1.0,
    block_size: int = 128,
    where: str = "layer",
    saliency: torch.Tensor | None = None,
    quant: QuantSpec | None = None,
    mask: torch.Tensor | None = None,
) -> SweepResult:
    """Prune `weight` (d_out x d_in) to `spec`, updating the kept weights to compensate.

    If `mask` (d_out x d_in, True = pruned) is given, it replaces the sweep's own choice: the
    same OBS updates then spread each pruned weight's error over the later columns of its row.
    When every row's pruned columns come before its kept ones this is the least-squares optimum
    of ||WX - W'X|| for that mask (with H damped); otherwise later pruned columns cannot pass
    their error back to earlier kept ones, as in SparseGPT itself.

    If `saliency` (d_out x d_in) is given, it receives W~^2 / diag(U)^2 of the running weights at
    the start of each column block, before that block's mask is chosen (D-Pruner's G).

    If `quant` is given, every kept weight is also quantized inside the sweep: when the sweep
    reaches column c, q = quant(w masked), and the error (w - q) / U_cc of pruned and kept
    weights alike goes to the later columns, so they compensate for rounding as for pruning.
    Grids (`dpruner.quantize`) are found as GPTQ finds them: per row from the whole matrix
    when the sweep starts, or per group of `quant.group_size` columns from the running, already
    updated weights when the sweep reaches the group's first column (entries already masked count
    as 0). A group must start at a column-block boundary or end inside its block, so that its
    running weights exist then (e.g. group 128 or 64 with block 128).
    """
    W = weight.detach().float().clone()
    H = hessian.clone()
    d_out, d_in = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    U, damp = inverse_hessian_factor(H, percdamp, max_damp, where)
    fixed = mask
    mask = torch.zeros_like(W, dtype=torch.bool)
    if quant is not None:
        groups = _quant_groups(d_in, quant, block_size, where)
        scales = torch.empty(d_out, len(groups), device=W.device)
        zeros = torch.empty_like(scales)
        codes = torch.empty(d_out, d_in, dtype=torch.uint8, device=W.device)
        scale = zero = None
    loss = 0.0
    for b0 in range(0, d_in, block_size):
        b1 = min(b0 + block_size, d_in)
        W1 = W[:, b0:b1].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[b0:b1, b0:b1]
        diag1 = torch.diag(U1)
        block_scores = W1.pow(2) / diag1.pow(2).unsqueeze(0)
        if saliency is not None:
            saliency[:, b0:b1] = block_scores
        if fixed is not None:
            mask1 = fixed[:, b0:b1].to(W.device)
        elif spec.is_nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            mask1 = lowest_k(block_scores, math.floor(spec.sparsity * W1.numel()))
        for t in range(b1 - b0):
            if fixed is None and spec.is_nm and t % spec.m == 0:
                group = W1[:, t : t + spec.m].pow(2) / diag1[t : t + spec.m].pow(2).unsqueeze(0)
                mask1[:, t : t + spec.m] = nm_mask(group, spec.n, spec.m)
            w = W1[:, t]
            q = w.masked_fill(mask1[:, t], 0)
            if quant is not None:
                if b0 + t in groups:
                    g, c1 = groups[b0 + t]
                    current = W1[:, t : c1 - b0].masked_fill(mask1[:, t : c1 - b0], 0)
                    if c1 > b1:  # a group from this block's start on: later blocks are current
                        current = torch.cat([current, W[:, b1:c1]], dim=1)
                    scale, zero = grid_params(current, quant.bits, quant.symmetric)
                    scales[:, g], zeros[:, g] = scale, zero
                code = quantize_to_grid(q, scale, zero, quant.maxq)
                codes[:, b0 + t] = code.to(torch.uint8)
                q = (code - zero) * scale  # pruned weights: code zero, exactly 0
            err = (w - q).div_(diag1[t])
            # Later columns compensate; column t itself becomes exactly q (zeros stay zeros).
            W1[:, t:].addr_(err, U1[t, t:], alpha=-1)
            W1[:, t] = q
            E1[:, t] = err
        # The proxy sum (w - q)^2 / U_cc^2 / 2 equals sum err^2 / 2.
        loss += float(E1.double().pow(2).sum()) / 2
        W[:, b0:b1] = W1
        mask[:, b0:b1] = mask1
        W[:, b1:] -= E1 @ U[b0:b1, b1:]
    quantized = Quantized(codes, scales, zeros) if quant is not None else None
    return SweepResult(weight=W, mask=mask, damping=damp, loss=loss, quantized=quantized)


def _quant_groups(
    d_in: int, quant: QuantSpec, block_size: int, where: str
) -> dict[int, tuple[int, int]]:
    """First column of each quantization group -> (group index, end column)."""
    groups = {}
    for g, (c0, c1) in enumerate(group_bounds(d_in, quant.group_size)):
        if c0 % block_size and c0 // block_size != (c1 - 1) // block_size:
            raise DprunerError(
                f"{where}: quantization group [{c0}, {c1}) starts inside a column block of "
                f"{block_size} and ends beyond it; use a group size that divides the block "
                "size or a multiple of it"
            )
        groups[c0] = (g, c1)
    return groups


class SparseGPTPruner(Pruner):
    name = "sparsegpt"
    default_group = "block"
    groups = ("block",)
    builds_hessians = True
    quantizes_in_sweep = True
    quantizer_name = "sparsegpt-joint-gptq"

    def __init__(
        self,
        percdamp: float = 0.01,
        max_damp: float = 1.0,
        block_size: int = 128,
        batch_size: int = 1,
        record_saliency: bool = False,
        quantize: QuantSpec | None = None,
        saliency_sink: Callable[[str, torch.Tensor], None] | None = None,
        fixed_mask: Callable[[str, SparsitySpec], torch.Tensor] | None = None,
        hessian_dtype: str = "auto",
        allocation: OwlAllocation | None = None,
        cross: CrossCalibration | None = None,
    ):
        super().__init__(quantize, allocation)
        group = quantize.group_size if quantize is not None else None
        if group and block_size % group and group % block_size:
            raise DprunerError(
                f"quantization group size {group} must divide the column block size "
                f"{block_size} or be a multiple of it"
            )
        self.percdamp, self.max_damp, self.block_size = percdamp, max_damp, block_size
        self.batch_size = batch_size
        self.record_saliency = record_saliency
        self.saliency: dict[str, torch.Tensor] = {}
        # Where each matrix's saliency goes as its block finishes (default: kept in `saliency`).
        self.saliency_sink = saliency_sink or self.saliency.__setitem__
        # (weight name, its block's spec) -> the mask to keep (True = pruned): the sweep then only
        # repairs the kept weights, and each mask is checked against that spec, not SparseGPT's.
        self.fixed_mask = fixed_mask
        self.cross = cross
        # Checked before any model work (every add_batch checks it again).
        check_hessian_dtype(hessian_dtype)
        self.hessian_dtype = hessian_dtype

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        from dpruner.methods.cross import CrossStatistics

        reports, losses, dampings = {}, {}, {}
        if self.cross is not None:
            calibration, n_domain = self.cross.rows(calibration)
        n_sequences, seqlen = calibration.shape

        def statistics(name, module):
            weight = weight_matrix(module)
            if self.cross is None:
                return HessianStatistics(weight.shape[1], weight.device, self.hessian_dtype)
            return CrossStatistics(
                HessianStatistics(weight.shape[1], weight.device, self.hessian_dtype),
                HessianStatistics(weight.shape[1], weight.device, self.hessian_dtype),
                n_domain,
                self.cross.coefficient,
            )

        def prune_block(index, linears, stats):
            block_spec = self.block_spec(index, spec)
            for name, module in linears.items():
                weight = weight_matrix(module)
                sink = (
                    torch.zeros_like(weight, dtype=torch.float32) if self.record_saliency else None
                )
                result = sparsegpt_sweep(
                    weight,
                    stats[name].hessian,
                    block_spec,
                    self.percdamp,
                    self.max_damp,
                    self.block_size,
                    where=f"{name} (N={n_sequences}, L={seqlen})",
                    saliency=sink,
                    quant=self.quantize,
                    mask=self.fixed_mask(name, block_spec) if self.fixed_mask else None,
                )
                if sink is not None:
                    self.saliency_sink(name, sink.cpu())
                if result.damping != self.percdamp:
                    message = f"{name}: Cholesky needed damping {result.damping}"
                    log.warning(message)
                    self.warnings.append(message)
                weight.data.copy_(result.weight.to(weight.dtype))
                own_blocks = not (spec.is_nm or self.fixed_mask)
                check_spec = (
                    SparsitySpec(block_spec.sparsity, "block", self.block_size)
                    if own_blocks
                    else block_spec
                )
                reports[name] = check_mask(name, weight.data, result.mask, check_spec)
                losses[name] = result.loss
                dampings[name] = result.damping
                del stats[name]

        layer_sequential(
            model, calibration, statistics, prune_block, batch_size=self.batch_size, blocks=blocks
        )
        self.details = {"reconstruction_proxy": losses, "damping": dampings}
        return reports
