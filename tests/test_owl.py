"""OWL: outlier ratios and layer sparsities against direct computations; the engine using them."""

import numpy as np
import pytest
import torch
from tiny import random_scores, random_tokens, tiny_model

from dpruner.errors import DprunerError
from dpruner.masks import SparsitySpec
from dpruner.methods import get_pruner
from dpruner.methods.dpruner import DPrunerPruner
from dpruner.methods.owl import OwlAllocation, outlier_ratio, owl_sparsities
from dpruner.models import decoder_blocks, prunable_linears
from dpruner.score_files import save_scores


def test_layer_sparsities_follow_the_authors_normalisation_and_average_the_target():
    ratios = [3.1, 0.4, 7.9, 2.2, 2.2, 5.0]
    got = owl_sparsities(ratios, 0.7, 0.08)
    # luuyin/OWL: D = (r - min) / (max - min) * 2 lambda; density = D - mean(D) + (1 - s).
    r = np.array(ratios)
    density = (r - r.min()) / (r.max() - r.min()) * 0.08 * 2
    expected = 1 - (density - density.mean() + (1 - 0.7))
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
    assert np.mean(got) == pytest.approx(0.7, abs=1e-12)
    assert max(got) - min(got) == pytest.approx(0.16)
    assert got[2] == min(got) and got[1] == max(got)  # most outliers, least pruned
    assert owl_sparsities([1.0, 1.0], 0.5, 0.08) == [0.5, 0.5]


def test_outlier_ratio_counts_scores_strictly_above_m_times_the_mean():
    scores = [torch.tensor([[1.0, 1.0], [1.0, 9.0]]), torch.tensor([[3.0, 0.0, 0.0, 0.0]])]
    # mean 15 / 8 = 1.875; 1.6 x mean = 3.0: the 3.0 ties and is not an outlier, the 9.0 is
    assert outlier_ratio(scores, 1.6) == 1 / 8
    assert outlier_ratio(scores, 1.0) == 2 / 8


def dense_block_ratios(model, tokens, m):
    """Each block's outlier ratio from one plain forward of the dense model."""
    _, blocks = decoder_blocks(model)
    inputs, handles = {}, []
    for b, block in enumerate(blocks):
        for name, linear in prunable_linears(block).items():
            key = (b, name)

            def hook(module, args, output, key=key):
                inputs[key] = args[0].reshape(-1, args[0].shape[-1]).double()

            handles.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=tokens)
    for handle in handles:
        handle.remove()
    ratios = []
    for b, block in enumerate(blocks):
        scores = [
            linear.weight.detach().double().abs()
            * (inputs[(b, name)].pow(2).sum(0) / tokens.shape[0]).sqrt()
            for name, linear in prunable_linears(block).items()
        ]
        flat = torch.cat([s.reshape(-1) for s in scores])
        ratios.append(float((flat > m * flat.mean()).double().mean()))
    return ratios


@pytest.mark.parametrize(
    ("method", "group"),
    [("wanda", "row"), ("sparsegpt", "block"), ("ria", "matrix"), ("dsnot", "row")],
)
def test_every_block_is_pruned_to_its_own_sparsity(method, group):
    model, tokens = tiny_model("llama", layers=4), random_tokens(4, 16)
    expected_ratios = dense_block_ratios(model, tokens, 2.0)
    pruner = get_pruner(method, allocation=OwlAllocation(m=2.0, lam=0.1))
    result = pruner.prune(model, tokens, SparsitySpec(0.5, group))
    owl = result.details["owl"]
    n_weights = sum(
        x.weight.numel() for x in prunable_linears(decoder_blocks(model)[1][0]).values()
    )
    assert owl["outlier_ratio"] == pytest.approx(expected_ratios, abs=1 / n_weights)
    assert len(set(owl["layer_sparsity"])) > 1
    assert np.mean(owl["layer_sparsity"]) == pytest.approx(0.5, abs=1e-12)
    for name, report in result.matrices.items():
        block = int(name.split(".")[2])
        target = owl["layer_sparsity"][block] * report["numel"]
        assert abs(report["pruned"] - target) < report["numel"] / 32 + 1  # d_in >= 32 per row


def test_dpruner_masks_each_block_at_its_own_sparsity(tmp_path):
    model, tokens = tiny_model("llama", layers=4), random_tokens(4, 16)
    save_scores(random_scores(model, seed=3), tmp_path / "s.safetensors", {"kind": "test"})
    pruner = DPrunerPruner(
        str(tmp_path / "s.safetensors"), allocation=OwlAllocation(m=2.0, lam=0.1)
    )
    result = pruner.prune(model, tokens, SparsitySpec(0.5))
    sparsities = result.details["owl"]["layer_sparsity"]
    for name, report in result.matrices.items():
        target = sparsities[int(name.split(".")[2])] * report["numel"]
        assert abs(report["pruned"] - target) < 1  # one threshold per matrix: exact


@pytest.mark.parametrize(
    ("method", "spec", "calibration", "lam", "message"),
    [
        ("wanda", SparsitySpec.parse(0.5, "2:4"), True, 0.08, "use unstructured"),
        ("magnitude", SparsitySpec(0.5, "row"), False, 0.08, "owl needs calibration data"),
        ("wanda", SparsitySpec(0.1, "row"), True, 0.3, "use a smaller lambda"),
    ],
)
def test_what_owl_cannot_do_is_one_clear_error(method, spec, calibration, lam, message):
    tokens = random_tokens(4, 16) if calibration else None
    pruner = get_pruner(method, allocation=OwlAllocation(m=2.0, lam=lam))
    with pytest.raises(DprunerError, match=message):
        pruner.prune(tiny_model("llama"), tokens, spec)
