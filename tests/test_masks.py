import pytest
import torch

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
