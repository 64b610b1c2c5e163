"""Cross-calibration: its extremes are the one-source methods bit for bit, between them the
formula."""

import pytest
import torch
from tiny import random_tokens, tiny_model

from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec
from dpruner.methods import get_pruner
from dpruner.methods.cross import CrossCalibration, CrossStatistics, cross_combine
from dpruner.methods.sparsegpt import HessianStatistics
from dpruner.models import prunable_weights

SPECS = {"sparsegpt": SparsitySpec(0.5, "block"), "wanda": SparsitySpec(0.5, "row")}


def weights(model):
    return {name: m.weight.detach().clone() for name, m in prunable_weights(model).items()}


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("coefficient", [0.0, 1.0])
def test_the_extremes_are_one_source_calibration_bit_for_bit(method, coefficient, threads):
    domain, general = random_tokens(4, 16, seed=1), random_tokens(4, 16, seed=2)
    alone, crossed = tiny_model(), tiny_model()
    source = general if coefficient else domain
    get_pruner(method, batch_size=2).prune(alone, source, SPECS[method])
    cross = CrossCalibration(general, coefficient)
    get_pruner(method, batch_size=2, cross=cross).prune(crossed, domain, SPECS[method])
    a, b = weights(alone), weights(crossed)
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_the_middle_is_the_trace_normalised_combination():
    g = torch.Generator().manual_seed(0)
    x_d, x_g = torch.randn(40, 6, generator=g), 5 * torch.randn(30, 6, generator=g)
    h_d, h_g = x_d.t() @ x_d, x_g.t() @ x_g
    got = cross_combine(h_d, h_g, 0.3)
    expected = 0.7 * h_d * 6 / torch.trace(h_d) + 0.3 * h_g * 6 / torch.trace(h_g)
    assert torch.allclose(got, expected, rtol=1e-6)
    assert float(got.diagonal().mean()) == pytest.approx(1.0)
    diag = cross_combine(h_d.diagonal(), h_g.diagonal(), 0.3)
    assert torch.allclose(diag, expected.diagonal(), rtol=1e-6)


def test_a_batch_across_the_boundary_is_split_by_sequence():
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(7, 5, 4, generator=g)  # 7 sequences of 5 tokens, the first 3 domain
    stats = CrossStatistics(HessianStatistics(4, "cpu"), HessianStatistics(4, "cpu"), 3, 0.5)
    for b0 in range(0, 7, 2):  # batches [0, 2), [2, 4) across the boundary, [4, 6), [6, 7)
        batch = rows[b0 : b0 + 2]
        stats.add_batch(batch.reshape(-1, 4), batch.shape[0])
    for part, hessian in ((rows[:3], stats.domain.hessian), (rows[3:], stats.general.hessian)):
        flat = part.reshape(-1, 4)
        assert torch.allclose(hessian, 2 * flat.t() @ flat / part.shape[0], rtol=1e-5)


def test_between_the_extremes_the_mask_lies_between_the_two_sources():
    domain, general = random_tokens(4, 16, seed=1), random_tokens(4, 16, seed=2)
    masks = {}
    for c in (0.0, 0.5, 1.0):
        model = tiny_model()
        get_pruner("wanda", cross=CrossCalibration(general, c)).prune(model, domain, SPECS["wanda"])
        masks[c] = torch.cat([(w == 0).reshape(-1) for w in weights(model).values()])
    assert not torch.equal(masks[0.5], masks[0.0]) and not torch.equal(masks[0.5], masks[1.0])
    # weights the two sources prune alike, the combination prunes too
    agreed = masks[0.0] == masks[1.0]
    assert float((masks[0.5] == masks[0.0])[agreed].float().mean()) > 0.95


@pytest.mark.parametrize(
    ("general", "coefficient", "message"),
    [
        (random_tokens(2, 16), 1.5, "must lie in"),
        (torch.zeros(0, 16, dtype=torch.long), 0.5, "needs general"),
    ],
)
def test_bad_cross_options_are_one_clear_error(general, coefficient, message):
    with pytest.raises(DprunerError, match=message):
        CrossCalibration(general, coefficient)
