import math

import pytest
import torch
from test_methods import correlated_layer, reconstruction_error
from tiny import random_tokens, tiny_model

from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec, check_mask
from dpruner.methods import get_pruner
from dpruner.methods.sparsegpt import sparsegpt_sweep
from dpruner.models import parameter_counts, prunable_weights
from dpruner.quantize import (
    QuantSpec,
    _fp16_ceil,
    dequantize,
    fake_quantize,
    group_bounds,
    quantize_rtn,
    stored_bytes,
)

GRIDS = [QuantSpec(4, None), QuantSpec(4, 16), QuantSpec(3, 24), QuantSpec(4, 16, symmetric=True)]


def per_column(values, d_in, group_size):
    widths = torch.tensor([c1 - c0 for c0, c1 in group_bounds(d_in, group_size)])
    return values.repeat_interleave(widths, dim=1)


def toy_matrix(sparse=False):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 64, generator=g)
    w[3, 5], w[7, 40] = 9.0, -6.0  # outliers stretch their groups
    w[9] = torch.rand(64, generator=g) + 0.5  # an all-positive row: the range is extended to 0
    w[10] = 0.0  # an all-zero row
    if sparse:
        w[torch.rand(w.shape, generator=g) < 0.5] = 0
    return w


@pytest.mark.parametrize("spec", GRIDS, ids=lambda s: s.label)
def test_round_to_nearest_is_within_half_a_step(spec):
    w = toy_matrix()
    codes, scales, zeros = quantize_rtn(w, spec.bits, spec.group_size, spec.symmetric)
    groups = len(group_bounds(64, spec.group_size))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= spec.maxq
    assert scales.shape == zeros.shape == (12, groups)
    assert torch.equal(scales, scales.half().float()), "scales are stored as fp16"
    assert torch.equal(zeros, zeros.round()) and bool(
        (zeros >= 0).all() & (zeros <= spec.maxq).all()
    )
    error = (w - dequantize(codes, scales, zeros, spec.group_size)).abs()
    half_step = per_column(scales, 64, spec.group_size) / 2
    assert bool((error <= half_step * (1 + 1e-6)).all()), float((error - half_step).max())
    assert float(error.max()) > 0  # a real quantization, not a copy


@pytest.mark.parametrize("spec", GRIDS, ids=lambda s: s.label)
def test_zeros_stay_exactly_zero(spec):
    w = toy_matrix(sparse=True)
    restored = fake_quantize(w, spec)
    assert bool((restored[w == 0] == 0).all())
    assert torch.equal(restored[10], torch.zeros(64))


def test_stored_size_of_the_stated_format():
    asym, sym = QuantSpec(4, 16), QuantSpec(4, 16, symmetric=True)
    # 24 x 64 at 4 bits: 768 bytes of codes; 24 rows x 4 groups, fp16 scale (+ fp16 zero point).
    assert stored_bytes(24, 64, asym) == 768 + 96 * 4
    assert stored_bytes(24, 64, sym) == 768 + 96 * 2
    assert stored_bytes(24, 64, QuantSpec(4, None)) == 768 + 24 * 4
    assert stored_bytes(24, 64, QuantSpec(3, 16)) == math.ceil(24 * 64 * 3 / 8) + 96 * 4
    # Bitmap: one bit per weight, then the codes of the non-zeros only.
    assert stored_bytes(24, 64, asym, "bitmap", nonzeros=768) == 192 + 384 + 96 * 4
    # Unquantized: 16-bit values, no scales.
    assert stored_bytes(24, 64, None) == 24 * 64 * 2
    assert stored_bytes(24, 64, None, "bitmap", nonzeros=768) == 192 + 768 * 2
    with pytest.raises(DprunerError, match="non-zero"):
        stored_bytes(24, 64, asym, "bitmap")


def layer():
    weight, inputs = correlated_layer()
    return weight, inputs, 2 * inputs.t() @ inputs / inputs.shape[0]


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("quant", GRIDS, ids=lambda s: s.label)
def test_joint_sweep_keeps_the_mask_and_the_grid(pattern, quant):
    weight, _, hessian = layer()
    spec = SparsitySpec.parse(0.5, pattern, "block")
    result = sparsegpt_sweep(weight, hessian, spec, block_size=48, quant=quant)
    w, mask = result.weight, result.mask
    # Every pruned weight is exactly zero and every group holds exactly its share of the mask.
    check_mask("layer", w, mask, spec if spec.is_nm else SparsitySpec(0.5, "block", 48))
    assert int(mask.sum()) == weight.numel() // 2
    # Every weight is its code on its group's grid: dequantizing the codes gives W' bit for bit.
    codes, scales, zeros = result.quantized
    assert torch.equal(w, dequantize(codes, scales, zeros, quant.group_size))
    assert bool((codes[mask] == per_column(zeros, 64, quant.group_size)[mask]).all())


# The sweep runs in fp32 and the reference below in float64, so their running weights differ by
# float order: measured on this layer (condition number 1e6), up to 4e-7 of the row's largest
# weight, and it varies with the CPU and thread count. A rounding decision (fp16 scale, zero
# point, code) whose input lies within SLACK of its boundary may go either way: the reference
# takes the sweep's side there, checks it is one of the two, and counts these near-ties.
SLACK = 2e-6  # of the row's largest weight: 5 times the measured spread


def tie_aware(decide, value, slack, taken):
    """decide(value) per row, or `taken` (the sweep's choice) where decide(value -/+ slack)
    differ; returns the choice and the number of such near-ties."""
    low, high = decide(value - slack), decide(value + slack)
    tie = low != high
    assert bool(((taken == low) | (taken == high))[tie].all()), "not a near-tie"
    return torch.where(tie, taken, decide(value)), int(tie.sum())


def reference_joint_sweep(weight, hessian, result, quant, m=None, percdamp=0.01):
    """Algorithm 1 of SparseGPT with quantization, one column at a time in float64, with an explicit
    inverse Hessian downdated after each column; the mask is the sweep's (for N:M, known up to the
    current M-group when a quantization group starts, as in the sweep). Returns the weights and
    the number of near-ties where it took the sweep's rounding (asymmetric grids only)."""
    W, H, mask = weight.double().clone(), hessian.double().clone(), result.mask
    d_in, maxq = W.shape[1], quant.maxq
    codes, scales, zeros = (t.double() for t in result.quantized)
    slack = SLACK * W.abs().amax(dim=1)
    H.diagonal().add_(percdamp * H.diagonal().mean())
    inverse = torch.linalg.inv(H)
    ties = 0
    for g, (c0, c1) in enumerate(group_bounds(d_in, quant.group_size)):
        known = mask.clone()
        if m:
            known[:, (c0 // m + 1) * m :] = False
        current = W[:, c0:c1].masked_fill(known[:, c0:c1], 0)
        low, high = current.amin(dim=1).clamp(max=0), current.amax(dim=1).clamp(min=0)
        span = (high - low) / maxq
        scale, n = tie_aware(_fp16_ceil, span, 2 * slack / maxq, scales[:, g])
        zero, n_zero = tie_aware(torch.round, -low / scale, slack / scale, zeros[:, g])
        ties += n + n_zero

        def on_grid(x, zero=zero):
            return torch.clamp(torch.round(x) + zero, 0, maxq)

        for c in range(c0, c1):
            kept = W[:, c].masked_fill(mask[:, c], 0)
            code, n = tie_aware(on_grid, kept / scale, slack / scale, codes[:, c])
            ties += n
            q = (code - zero) * scale
            err = (W[:, c] - q) / inverse[c, c]
            W[:, c + 1 :] -= torch.outer(err, inverse[c, c + 1 :])
            W[:, c] = q
            inverse -= torch.outer(inverse[:, c], inverse[c, :]) / inverse[c, c]
    return W, ties


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("group_size", [8, 16, 32])
@pytest.mark.parametrize("perturbation", [0, 3e-7])
def test_joint_sweep_is_column_by_column_obs_with_quantization(
    pattern, group_size, perturbation, threads
):
    # A relative perturbation of a few fp32 steps moves the sweep's float order as another CPU
    # does: at 3e-7, group size 8 and 2:4, one row's fp16 scale goes one step up (the Intel
    # failure of issue 20: 4 weights of 1,536 one grid step apart).
    weight, _, hessian = layer()
    weight, hessian = weight * (1 + perturbation), hessian * (1 + perturbation)
    quant = QuantSpec(4, group_size)
    spec = SparsitySpec.parse(0.5, pattern, "block")
    result = sparsegpt_sweep(weight, hessian, spec, block_size=32, quant=quant)
    expected, ties = reference_joint_sweep(weight, hessian, result, quant, spec.m)
    torch.testing.assert_close(result.weight.double(), expected, rtol=0, atol=1e-5)
    # About 1,900 rounding decisions; 0 to 4 near-ties measured at perturbations of -5e-7 to 2e-6.
    assert ties <= 8, f"{ties} near-ties: more than float order explains"


@pytest.mark.parametrize("quant", GRIDS, ids=lambda s: s.label)
def test_joint_sweep_reconstructs_better_than_rounding_after_sparsegpt(quant):
    weight, inputs, hessian = layer()
    spec = SparsitySpec(0.5, "block")
    plain = sparsegpt_sweep(weight, hessian, spec, block_size=48)
    joint = sparsegpt_sweep(weight, hessian, spec, block_size=48, quant=quant)
    errors = {
        "sparsegpt": reconstruction_error(weight, plain.weight, inputs),
        "rtn_after_sparsegpt": reconstruction_error(
            weight, fake_quantize(plain.weight, quant), inputs
        ),
        "joint": reconstruction_error(weight, joint.weight, inputs),
    }
    assert errors["sparsegpt"] < errors["joint"] < errors["rtn_after_sparsegpt"], errors


def test_a_group_straddling_a_column_block_is_refused():
    with pytest.raises(DprunerError, match="group size 48 must divide .* 128"):
        get_pruner("sparsegpt", quantize=QuantSpec(4, 48))
    weight, _, hessian = layer()
    with pytest.raises(DprunerError, match="group \\[40, 60\\).*block of 48"):
        sparsegpt_sweep(
            weight, hessian, SparsitySpec(0.5, "block"), block_size=48, quant=QuantSpec(4, 20)
        )


@pytest.mark.parametrize(("method", "group"), [("magnitude", "matrix"), ("wanda", "row")])
def test_round_to_nearest_after_the_mask_for_the_other_methods(method, group):
    tokens, spec, quant = random_tokens(4, 16), SparsitySpec(0.5, group), QuantSpec(4, 16)
    pruned = tiny_model("llama")
    get_pruner(method).prune(pruned, tokens, spec)
    model = tiny_model("llama")
    result = get_pruner(method, quantize=quant).prune(model, tokens, spec)
    for name, module in prunable_weights(model).items():
        expected = fake_quantize(prunable_weights(pruned)[name].weight.detach(), quant)
        assert torch.equal(module.weight.detach(), expected), name
    assert result.quantization["quantizer"] == "rtn"
    assert result.quantization["mask_sparsity_linear"] == pytest.approx(0.5)
    assert result.sparsity_linear >= 0.5


def test_sparsegpt_pruner_quantizes_in_its_sweep_and_reports_the_stored_size():
    model = tiny_model("llama")
    result = get_pruner("sparsegpt", quantize=QuantSpec(4, 16)).prune(
        model, random_tokens(4, 16), SparsitySpec(0.5, "block")
    )
    q = result.quantization
    assert q["quantizer"] == "sparsegpt-joint-gptq" and q["label"] == "w4-g16-asym"
    linear, total = parameter_counts(model)
    assert q["mask_sparsity_linear"] == pytest.approx(0.5)
    assert result.sparsity_linear == pytest.approx(0.5 + q["zeros_from_rounding"] / linear)
    for module in prunable_weights(model).values():
        groups = module.weight.detach().reshape(module.weight.shape[0], -1, 16)
        distinct = [len(group.unique()) for row in groups for group in row]
        assert max(distinct) <= 16  # 2^4 grid points per row and group
    stored = result.stored
    # 4-bit codes, two per byte, and an fp16 scale and zero point per 16 weights.
    assert stored["prunable_bytes_dense_codes"] == linear // 2 + linear // 16 * 4
    assert stored["dense_16bit_bytes"] == 2 * total
    assert stored["total_bytes_dense_codes"] == stored["prunable_bytes_dense_codes"] + 2 * (
        total - linear
    )
    assert stored["prunable_bytes_bitmap"] < stored["prunable_bytes_dense_codes"]
