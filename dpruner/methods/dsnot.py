"""DSnoT: training-free prune-and-regrow on a Wanda or SparseGPT mask (Zhang et al., ICLR 2024;
docs/methods.md#dsnot).

Per output row i, pruning the set P changes the row's output by -sum_{j in P} W_ij x_j; its
expected value over the calibration tokens is -e_i with e_i = sum_{j in P} D_ij and
D_ij = W_ij * m_j, m_j the sum of x_j over a sequence's tokens averaged over the sequences (the
authors' scale, which their update threshold is measured on). While |e_i| exceeds the threshold,
each cycle regrows one pruned weight whose D has the sign of e_i (largest |D_ij| / Var(x_j)^p
first) and prunes one kept weight whose D has the opposite sign (lowest Wanda score first), so
the row's sparsity stays exact and e_i shrinks. Under N:M the weight pruned instead is the kept
one, untouched so far, of lowest initial score in the regrown weight's group of M.

As in the authors' code (zyxxmu/DSnoT) the MLP linears keep their initial mask by default
(`skip`), the sign check on the error after a swap is off for unstructured masks and on for N:M,
and the initial SparseGPT mask is SparseGPT's saliency W^2 / [U_jj]^2 of the original weights,
chosen per row without the OBS weight update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dpruner.calibration import LayerStatistics, layer_sequential
from dpruner.config import schema_default
from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods.base import Pruner, apply_mask
from dpruner.methods.sparsegpt import HessianStatistics, SparseGPTPruner, inverse_hessian_factor
from dpruner.methods.wanda import ChannelNormStatistics, wanda_scores
from dpruner.models import decoder_blocks, weight_matrix
from dpruner.quantize import QuantSpec

if TYPE_CHECKING:
    from dpruner.methods.owl import OwlAllocation

INITIAL_METHODS = ("wanda", "sparsegpt")


class DSnoTStatistics(LayerStatistics):
    """Wanda's channel norms, each channel's sum and sum of squares (fp64), and optionally H."""

    def __init__(self, d_in: int, device, hessian: HessianStatistics | None = None):
        self.norms = ChannelNormStatistics(d_in, device)
        self.hessian = hessian
        self.sum = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(d_in, dtype=torch.float64, device=device)
        self.tokens = 0
        self.n_sequences = 0

    def add_batch(self, inputs: torch.Tensor, n_sequences: int) -> None:
        self.norms.add_batch(inputs, n_sequences)
        if self.hessian is not None:
            self.hessian.add_batch(inputs, n_sequences)
        x = inputs.double()
        self.sum += x.sum(dim=0)
        self.sum_sq += x.pow(2).sum(dim=0)
        self.tokens += x.shape[0]
        self.n_sequences += n_sequences

    @property
    def sequence_sum(self) -> torch.Tensor:
        """m_j: the sum of x_j over a sequence's tokens, averaged over the sequences."""
        return self.sum / self.n_sequences

    @property
    def variance(self) -> torch.Tensor:
        """Var(x_j) over all calibration tokens."""
        mean = self.sum / self.tokens
        return (self.sum_sq / self.tokens - mean.pow(2)).clamp_min(0)


def sparsegpt_saliency(
    weight: torch.Tensor, hessian: torch.Tensor, percdamp: float, max_damp: float, where: str
) -> torch.Tensor:
    """W^2 / [U_jj]^2 of the original weights, U the upper Cholesky factor of the damped H^-1;
    dead inputs (H_jj = 0) score 0, as SparseGPT's sweep treats them."""
    w = weight.detach().float().clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    upper, _ = inverse_hessian_factor(h, percdamp, max_damp, where)
    return w.pow(2) / torch.diag(upper).pow(2).unsqueeze(0)


def _queue(candidates: torch.Tensor, key: torch.Tensor, descending: bool = False):
    """Per row, the columns of `candidates` ordered by `key` (ascending: ties by position;
    descending: the ascending order reversed, ties last position first), then the rest; and
    how many candidates each row has."""
    order = torch.sort(key, dim=1, stable=True).indices
    if descending:
        order = order.flip(1)
    rest = (~candidates).gather(1, order).to(torch.int8)
    order = order.gather(1, torch.sort(rest, dim=1, stable=True).indices)
    return order, candidates.sum(dim=1)


def dsnot_mask(
    mask: torch.Tensor,
    effect: torch.Tensor,
    variance: torch.Tensor,
    prune_rank: torch.Tensor,
    max_cycles: int,
    threshold: float,
    variance_power: float = 1.0,
    same_sign: bool = False,
    m: int | None = None,
) -> torch.Tensor:
    """The mask (True = pruned) after DSnoT's swaps; every row keeps its number of pruned weights.

    `effect` is D (d_out x d_in), `variance` Var(x_j) (d_in), `prune_rank` the score whose lowest
    kept weight is pruned first (Wanda's; under N:M, with `m`, the initial mask's score). A row
    stops when |e_i| <= `threshold`, when `same_sign` and a swap would flip e_i's sign from its
    initial one, when it has no candidate of the sign it needs, or after `max_cycles` cycles.
    """
    initial = mask
    mask = mask.clone()
    d_out, d_in = mask.shape
    rows = torch.arange(d_out, device=mask.device)
    d = effect.double()
    ratio = d / variance.double().pow(variance_power).unsqueeze(0) if variance_power else d
    err = (d * mask).sum(dim=1)
    sign0 = torch.sign(err)
    grow_up, n_grow_up = _queue(mask & (d > 0), ratio, descending=True)
    grow_down, n_grow_down = _queue(mask & (d < 0), ratio)
    cut_up, n_cut_up = _queue(~mask & (d > 0), prune_rank)
    cut_down, n_cut_down = _queue(~mask & (d < 0), prune_rank)
    pointers = torch.zeros(4, d_out, dtype=torch.long, device=mask.device)
    active = torch.ones(d_out, dtype=torch.bool, device=mask.device)

    def head(queue: torch.Tensor, k: int) -> torch.Tensor:
        return queue.gather(1, pointers[k].clamp(max=d_in - 1).unsqueeze(1)).squeeze(1)

    for _ in range(max_cycles):
        up = err > 0
        regrow = torch.where(up, head(grow_up, 0), head(grow_down, 1))
        found = torch.where(up, pointers[0] < n_grow_up, pointers[1] < n_grow_down)
        if m is None:
            # e > 0 needs a kept weight with D < 0 pruned, e < 0 one with D > 0.
            prune = torch.where(up, head(cut_down, 3), head(cut_up, 2))
            partner = torch.where(up, pointers[3] < n_cut_down, pointers[2] < n_cut_up)
            found &= partner
        else:
            columns = (regrow - regrow % m).unsqueeze(1) + torch.arange(m, device=mask.device)
            untouched = ~(mask | initial).gather(1, columns)
            rank = prune_rank.gather(1, columns).masked_fill(~untouched, float("inf"))
            prune = columns.gather(1, rank.argmin(dim=1, keepdim=True)).squeeze(1)
            partner = untouched.any(dim=1)
        keep_going = err.abs() > threshold
        if same_sign:  # judged on the swap that would happen; without a partner there is none
            after = err + d[rows, prune] - d[rows, regrow]
            keep_going &= (torch.sign(after) == sign0) | ~partner
        active &= keep_going & found
        swap = active & partner
        mask[rows[swap], regrow[swap]] = False
        mask[rows[swap], prune[swap]] = True
        err = torch.where(swap, err + d[rows, prune] - d[rows, regrow], err)
        pointers[0] += up
        pointers[1] += ~up
        if m is None:
            pointers[2] += ~up
            pointers[3] += up
        if not bool(active.any()):
            break
    return mask


class DSnoTPruner(Pruner):
    name = "dsnot"
    default_group = "row"
    groups = ("row",)

    def __init__(
        self,
        initial: str | None = None,
        max_cycles: int | None = None,
        update_threshold: float | None = None,
        variance_power: float | None = None,
        same_sign: bool | None = None,
        skip: list[str] | None = None,
        batch_size: int = 1,
        hessian_dtype: str = "auto",
        quantize: QuantSpec | None = None,
        allocation: OwlAllocation | None = None,
    ):
        super().__init__(quantize, allocation)

        def option(value, key):
            return schema_default(key) if value is None else value

        self.initial = option(initial, "dsnot_initial")
        if self.initial not in INITIAL_METHODS:
            raise DprunerError(
                f"dsnot: initial must be one of {INITIAL_METHODS}, got '{self.initial}'"
            )
        self.max_cycles = option(max_cycles, "dsnot_max_cycles")
        self.update_threshold = option(update_threshold, "dsnot_update_threshold")
        self.variance_power = option(variance_power, "dsnot_variance_power")
        self.same_sign = option(same_sign, "dsnot_same_sign")
        self.skip = set(option(skip, "dsnot_skip"))
        self.batch_size = batch_size
        # Only the damping and the Hessian precision of SparseGPT's initial saliency.
        self.sparsegpt = SparseGPTPruner(hessian_dtype=hessian_dtype)

    def _prune(self, model, calibration, spec: SparsitySpec, blocks=None) -> dict[str, dict]:
        reports, swaps = {}, {}
        prefix, _ = decoder_blocks(model)
        sparsegpt = self.sparsegpt

        def statistics(name, module):
            weight = weight_matrix(module)
            hessian = None
            if self.initial == "sparsegpt":
                hessian = HessianStatistics(weight.shape[1], weight.device, sparsegpt.hessian_dtype)
            return DSnoTStatistics(weight.shape[1], weight.device, hessian)

        def prune_block(index, linears, stats):
            block_spec = self.block_spec(index, spec)
            for name, module in linears.items():
                weight = weight_matrix(module).detach()
                stat = stats.pop(name)
                wanda = wanda_scores(weight, stat.norms.mean_sq_norm)
                initial_scores = wanda
                if self.initial == "sparsegpt":
                    initial_scores = sparsegpt_saliency(
                        weight, stat.hessian.hessian, sparsegpt.percdamp, sparsegpt.max_damp, name
                    )
                initial = prune_mask(initial_scores, block_spec)
                mask = initial
                parts = name[len(f"{prefix}.{index}.") : -len(".weight")].split(".")
                if not self.skip & set(parts):
                    mask = dsnot_mask(
                        initial,
                        weight.double() * stat.sequence_sum.unsqueeze(0),
                        stat.variance,
                        initial_scores if block_spec.is_nm else wanda,
                        self.max_cycles,
                        self.update_threshold,
                        self.variance_power,
                        self.same_sign or block_spec.is_nm,
                        block_spec.m,
                    )
                swaps[name] = int((initial & ~mask).sum())
                reports[name] = apply_mask(name, module, mask, block_spec)

        layer_sequential(
            model, calibration, statistics, prune_block, batch_size=self.batch_size, blocks=blocks
        )
        self.details = {"dsnot_swaps": swaps}
        return reports
