"""DSnoT: the swap rule against a per-row loop, exact sparsity, and its wiring into the engine."""

import math

import pytest
import torch
from tiny import random_tokens, tiny_model

from dpruner.masks import SparsitySpec, nm_mask, row_mask
from dpruner.methods import get_pruner
from dpruner.methods.dsnot import DSnoTStatistics, dsnot_mask
from dpruner.models import prunable_weights


def reference(mask, effect, variance, rank, max_cycles, threshold, power, same_sign, m):
    """DSnoT row by row with lists, as docs/methods.md#dsnot states the rule."""
    mask = mask.clone()
    d_out, d_in = mask.shape
    for i in range(d_out):
        d = [float(x) for x in effect[i]]
        ratio = [d[j] / float(variance[j]) ** power if power else d[j] for j in range(d_in)]
        score = [float(x) for x in rank[i]]
        pruned = [j for j in range(d_in) if mask[i, j]]
        kept = [j for j in range(d_in) if not mask[i, j]]
        grow_up = sorted((j for j in pruned if d[j] > 0), key=lambda j: (-ratio[j], -j))
        grow_down = sorted((j for j in pruned if d[j] < 0), key=lambda j: (ratio[j], j))
        cut_up = sorted((j for j in kept if d[j] > 0), key=lambda j: (score[j], j))
        cut_down = sorted((j for j in kept if d[j] < 0), key=lambda j: (score[j], j))
        untouched = set(kept)
        err = sum(d[j] for j in pruned)
        sign0 = math.copysign(1, err) if err else 0
        for _ in range(max_cycles):
            if abs(err) <= threshold:
                break
            grow, cut = (grow_up, cut_down) if err > 0 else (grow_down, cut_up)
            if not grow or (m is None and not cut):
                break
            r = grow.pop(0)
            if m is None:
                p = cut.pop(0)
            else:
                group = [j for j in range(r - r % m, r - r % m + m) if j in untouched]
                if not group:
                    continue
                p = min(group, key=lambda j: (score[j], j))
            after = err + d[p] - d[r]
            if same_sign and (math.copysign(1, after) if after else 0) != sign0:
                break
            mask[i, r], mask[i, p] = False, True
            untouched.discard(p)
            err = after
    return mask


def integer_layer(seed, d_out=12, d_in=16):
    """Small integers everywhere, so D, the errors and the ranks tie often and sum exactly."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-3, 4, (d_out, d_in), generator=g).double()
    means = torch.tensor([-2.0, -1.0, 1.0, 2.0])[torch.randint(0, 4, (d_in,), generator=g)]
    variance = torch.tensor([1.0, 2.0, 4.0])[torch.randint(0, 3, (d_in,), generator=g)]
    rank = weight.abs() * torch.randint(1, 3, (d_in,), generator=g)
    return weight * means, variance, rank


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "1:4", "3:4"])
@pytest.mark.parametrize(("threshold", "same_sign", "power"), [(0.5, False, 1), (0.0, True, 0)])
def test_swaps_equal_the_per_row_loop_with_ties(seed, pattern, threshold, same_sign, power):
    effect, variance, rank = integer_layer(seed)
    sparsity = {"1:4": 0.25, "3:4": 0.75}.get(pattern, 0.5)
    spec = SparsitySpec.parse(sparsity, pattern, "row")
    initial = nm_mask(rank, spec.n, spec.m) if spec.is_nm else row_mask(rank, spec.sparsity)
    args = (initial, effect, variance, rank, 6, threshold, power, same_sign, spec.m)
    got = dsnot_mask(*args)
    assert torch.equal(got, reference(*args))
    assert torch.equal(got.sum(1), initial.sum(1))  # every row keeps its count
    if spec.is_nm:
        assert bool((got.reshape(12, -1, spec.m).sum(-1) == spec.n).all())
    assert not torch.equal(got, initial)  # the rule did swap something


def test_swaps_shrink_each_rows_expected_error_to_the_threshold():
    effect, variance, rank = integer_layer(9, d_out=20, d_in=64)
    initial = row_mask(rank, 0.5)
    got = dsnot_mask(initial, effect, variance, rank, 50, 1.0, 1, False)
    before = (effect * initial).sum(1).abs()
    after = (effect * got).sum(1).abs()
    assert bool((after <= before).all())
    assert int((after <= 1.0).sum()) > int((before <= 1.0).sum())


def test_statistics_are_the_sequence_sum_and_the_token_variance():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(5, 7, 6, generator=g)
    stats = DSnoTStatistics(6, "cpu")
    for batch in (inputs[:2], inputs[2:]):  # batches of 2 and 3 sequences
        stats.add_batch(batch.reshape(-1, 6), batch.shape[0])
    flat = inputs.reshape(-1, 6).double()
    assert torch.allclose(stats.sequence_sum, flat.sum(0) / 5)
    assert torch.allclose(stats.variance, flat.var(0, unbiased=False))


def test_no_cycles_is_wanda_bit_for_bit_and_skipped_linears_keep_wandas_mask():
    tokens = random_tokens(4, 16)
    wanda, none, default = tiny_model(), tiny_model(), tiny_model()
    get_pruner("wanda").prune(wanda, tokens, SparsitySpec(0.5, "row"))
    get_pruner("dsnot", max_cycles=0, skip=[]).prune(none, tokens, SparsitySpec(0.5, "row"))
    result = get_pruner("dsnot", update_threshold=0.0).prune(
        default, tokens, SparsitySpec(0.5, "row")
    )
    masks = [{n: m.weight == 0 for n, m in prunable_weights(x).items()} for x in (wanda, none)]
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    swaps = result.details["dsnot_swaps"]
    assert all(swaps[n] == 0 for n in swaps if ".mlp." in n)  # the authors' default skip
    assert sum(swaps[n] for n in swaps if ".self_attn." in n) > 0


@pytest.mark.parametrize(("pattern", "initial"), [("unstructured", "sparsegpt"), ("2:4", "wanda")])
def test_every_matrix_keeps_the_exact_sparsity(pattern, initial):
    model = tiny_model("qwen2")
    spec = SparsitySpec.parse(0.5, pattern, "row")
    pruner = get_pruner("dsnot", initial=initial, skip=[], update_threshold=0.0)
    result = pruner.prune(model, random_tokens(4, 16), spec)
    assert sum(result.details["dsnot_swaps"].values()) > 0
    for module in prunable_weights(model).values():  # check_mask ran too; the rows directly:
        zeros = (module.weight == 0).sum(1)
        assert bool((zeros == module.weight.shape[1] // 2).all())


def test_an_unknown_initial_method_is_one_clear_error():
    from dpruner.errors import DprunerError

    with pytest.raises(DprunerError, match="initial must be one of"):
        get_pruner("dsnot", initial="magnitude")
