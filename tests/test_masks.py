import math

import pytest
import torch

from dpruner import masks
from dpruner.masks import (
    SparsityError,
    SparsitySpec,
    block_mask,
    check_mask,
    lowest_k,
    nm_mask,
    prune_mask,
    row_mask,
)


def test_lowest_k_breaks_ties_by_position():
    scores = torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]])
    mask = lowest_k(scores, 3)
    assert mask.tolist() == [[True, True, False], [True, False, False]]


@pytest.mark.parametrize("levels", [3, 50, None])
def test_lowest_k_equals_the_first_k_of_a_stable_sort(levels):
    generator = torch.Generator().manual_seed(levels or 0)
    scores = torch.rand(37, 23, generator=generator)
    if levels:  # de-quantised checkpoints give many equal scores
        scores = (scores * levels).floor()
    for k in (0, 1, 300, 851):
        expected = torch.zeros(scores.numel(), dtype=torch.bool)
        expected[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = True
        assert torch.equal(lowest_k(scores, k), expected.view(scores.shape))


def test_row_mask_prunes_floor_of_each_row():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    mask = row_mask(scores, 0.5)
    assert mask.tolist() == [
        [False, False, False, True, True],
        [True, True, False, False, False],
    ]


def test_matrix_mask_compares_across_rows():
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    mask = prune_mask(scores, SparsitySpec(0.5, "matrix"))
    assert mask.tolist() == [[True, True], [True, False], [False, False]]


def test_block_mask_uses_a_narrower_last_block():
    scores = torch.arange(10, dtype=torch.float32).reshape(2, 5).flip(1)  # [[4..0], [9..5]]
    mask = block_mask(scores, 0.5, block_size=2)
    # blocks: columns 0-1 (4 weights, 2 pruned), 2-3 (2 pruned), 4 (2 weights, 1 pruned)
    assert mask[:, 0:2].sum() == 2 and mask[:, 2:4].sum() == 2 and mask[:, 4:].sum() == 1
    assert mask[:, 0:2].tolist() == [[True, True], [False, False]]
    assert mask[:, 4].tolist() == [True, False]


def test_nm_mask_prunes_n_of_every_m_per_row():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 8.0, 5.0, 7.0, 6.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[True, False, False, True, False, True, False, True]]
    ties = torch.ones(1, 4)
    assert nm_mask(ties, 2, 4).tolist() == [[True, True, False, False]]


def test_check_mask_accepts_exact_and_rejects_short_groups():
    weight = torch.randn(4, 8)
    spec = SparsitySpec(0.5, "row")
    mask = row_mask(weight.abs(), 0.5)
    weight[mask] = 0
    report = check_mask("w", weight, mask, spec)
    assert report["pruned"] == 16 and report["sparsity"] == pytest.approx(0.5)
    short = mask.clone()
    short[0, short[0].nonzero()[0]] = False
    with pytest.raises(SparsityError, match="group 0"):
        check_mask("w", weight, short, spec)


def test_check_mask_rejects_unzeroed_weights():
    weight = torch.ones(2, 4)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, :2] = True
    with pytest.raises(SparsityError, match="not zero"):
        check_mask("w", weight, mask, SparsitySpec(0.5, "row"))


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_sparsity_outside_open_interval_is_an_error(bad):
    with pytest.raises(SparsityError, match="sparsity must lie in"):
        SparsitySpec(bad)


def test_nm_pattern_must_agree_with_sparsity_and_width():
    with pytest.raises(SparsityError, match="fixes sparsity"):
        SparsitySpec.parse(0.6, "2:4")
    spec = SparsitySpec.parse(0.5, "2:4")
    with pytest.raises(SparsityError, match="d_in = 6"):
        spec.check_shape("layer", 6)
    with pytest.raises(SparsityError, match="pattern must be"):
        SparsitySpec.parse(0.5, "half")


# The implementation before issue 21 (kthvalue everywhere), kept as the independent reference
# that the CUDA path (topk) must reproduce bit for bit.
def _reference_lowest_k(scores, k):
    flat = scores.reshape(-1)
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(flat, k).values
    mask = flat < kth
    ties = flat == kth
    mask |= ties & (torch.cumsum(ties, 0) <= k - mask.sum())
    return mask.view(scores.shape)


def _reference_prune_mask(scores, spec):
    if spec.is_nm:
        groups = scores.reshape(scores.shape[0], -1, spec.m)
        order = torch.sort(groups, dim=2, stable=True).indices[:, :, : spec.n]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order, True)
        return mask.reshape(scores.shape)
    if spec.group == "row":
        k = math.floor(spec.sparsity * scores.shape[1])
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)
    if spec.group == "block":
        mask = torch.zeros_like(scores, dtype=torch.bool)
        for b0 in range(0, scores.shape[1], spec.block_size):
            block = scores[:, b0 : b0 + spec.block_size]
            k = math.floor(spec.sparsity * block.numel())
            mask[:, b0 : b0 + spec.block_size] = _reference_lowest_k(block, k)
        return mask
    return _reference_lowest_k(scores, math.floor(spec.sparsity * scores.numel()))


def _score_cases():
    generator = torch.Generator().manual_seed(21)
    random = torch.rand(24, 40, generator=generator)
    threshold_ties = random.clone()
    threshold_ties[::3, ::2] = torch.sort(random.reshape(-1)).values[480]  # ties at the k-th value
    signed_zeros = torch.zeros(24, 40)
    signed_zeros[::2] = -0.0
    return {
        "random": random,
        "few levels": (random * 3).floor(),
        "all equal": torch.ones(24, 40),
        "ties at the threshold": threshold_ties,
        "signed zeros": signed_zeros,
        "descending": torch.arange(960, 0, -1, dtype=torch.float32).reshape(24, 40),
    }


@pytest.mark.parametrize("use_topk", [True, False])
@pytest.mark.parametrize("case", list(_score_cases()))
def test_lowest_k_equals_the_kthvalue_implementation(case, use_topk):
    scores = _score_cases()[case]
    n = scores.numel()
    for k in (0, 1, 2, 479, 480, 481, n // 2, n - 1, n):
        expected = _reference_lowest_k(scores, k)
        assert torch.equal(lowest_k(scores, k, use_topk=use_topk), expected), (case, k)


@pytest.mark.parametrize("case", list(_score_cases()))
def test_every_group_on_the_topk_path_equals_the_kthvalue_implementation(case, monkeypatch):
    scores = _score_cases()[case]
    selection = masks.kth_smallest
    monkeypatch.setattr(
        masks, "kth_smallest", lambda flat, k, use_topk=None: selection(flat, k, True)
    )
    specs = [
        SparsitySpec(0.5, "matrix"),
        SparsitySpec(0.3, "matrix"),
        SparsitySpec(0.5, "row"),
        SparsitySpec(0.7, "row"),
        SparsitySpec(0.5, "block", block_size=16),  # 40 columns: a narrower last block
        SparsitySpec(0.6, "block", block_size=8),
        SparsitySpec.parse(0.5, "2:4"),
        SparsitySpec.parse(0.25, "1:4"),
        SparsitySpec.parse(0.625, "5:8"),
    ]
    for spec in specs:
        assert torch.equal(prune_mask(scores, spec), _reference_prune_mask(scores, spec)), spec


def test_kth_smallest_keeps_kthvalue_on_the_cpu(monkeypatch):
    flat = torch.tensor([3.0, 1.0, 2.0, 1.0])
    assert float(masks.kth_smallest(flat, 3, use_topk=True)) == 2.0

    def refused(*args, **kwargs):
        raise AssertionError("topk on the CPU: kthvalue is faster there")

    monkeypatch.setattr(torch, "topk", refused)
    assert float(masks.kth_smallest(flat, 3)) == 2.0
