"""RIA: its score against a loop in float32 arithmetic, with ties, zero rows and N:M."""

import numpy as np
import pytest
import torch
from tiny import layer_inputs, random_tokens, tiny_model

from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods import PRUNERS, get_pruner
from dpruner.methods.ria import ria_scores
from dpruner.models import prunable_weights


def reference_scores(weight, mean_sq_norm, a):
    """(|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * sqrt(a_j)^a, one float32 op at a time."""
    w = np.abs(weight.numpy().astype(np.float32))
    d_out, d_in = w.shape
    out = np.zeros_like(w)
    for i in range(d_out):
        for j in range(d_in):
            column, row = w[:, j].sum(dtype=np.float32), w[i, :].sum(dtype=np.float32)
            relative = (w[i, j] / column if column else np.float32(0)) + (
                w[i, j] / row if row else np.float32(0)
            )
            activation = np.sqrt(np.float32(mean_sq_norm[j])) ** np.float32(a)
            out[i, j] = np.float32(relative) * np.float32(activation)
    return torch.from_numpy(out)


def tied_layer():
    """Small integer weights (exact sums, many ties), a zero row and a zero column; channel norms
    whose square roots' powers are exact (1, 16, 81: sqrt 1, 2, 3 at a = 0.5), one dead channel."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randint(-2, 3, (8, 16), generator=g).float()
    weight[3] = 0
    weight[:, 5] = 0
    norms = torch.tensor([1.0, 16.0, 81.0, 0.0])[torch.randint(0, 4, (16,), generator=g)]
    return weight, norms


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_scores_equal_the_float32_loop_bit_for_bit(a):
    weight, norms = tied_layer()
    got = ria_scores(weight, norms, a)
    assert torch.equal(got, reference_scores(weight, norms, a))
    assert bool(torch.isfinite(got).all())  # the zero row and column give 0, not 0/0


@pytest.mark.parametrize(
    ("pattern", "group"), [("unstructured", "matrix"), ("unstructured", "row"), ("2:4", "matrix")]
)
def test_masks_are_the_exact_lowest_of_the_loop_scores_ties_by_position(pattern, group):
    weight, norms = tied_layer()
    scores = reference_scores(weight, norms, 0.5).numpy()
    spec = SparsitySpec.parse(0.5, pattern, group)
    expected = torch.zeros(scores.shape, dtype=torch.bool)
    if spec.is_nm:
        for i in range(scores.shape[0]):
            for c in range(0, scores.shape[1], 4):
                for _, j in sorted((scores[i, j], j) for j in range(c, c + 4))[:2]:
                    expected[i, j] = True
    elif group == "row":
        for i in range(scores.shape[0]):
            for _, j in sorted((scores[i, j], j) for j in range(scores.shape[1]))[:8]:
                expected[i, j] = True
    else:
        flat = sorted((scores[i, j], i * 16 + j) for i in range(8) for j in range(16))
        for _, k in flat[:64]:
            expected[k // 16, k % 16] = True
    assert len(np.unique(scores)) < scores.size // 2  # ties are the rule here, not the exception
    assert torch.equal(prune_mask(ria_scores(weight, norms, 0.5), spec), expected)


def test_the_pruner_masks_by_the_activations_of_the_walk(threads):
    model = tiny_model("llama")
    tokens = random_tokens(3, 16)
    name = "model.layers.0.mlp.up_proj.weight"
    layer = prunable_weights(model)[name]
    inputs = layer_inputs(model, layer, tokens)
    norms = inputs.double().pow(2).sum(0) / 3
    w = layer.weight.detach().double().abs()
    scores = (w / w.sum(0) + w / w.sum(1, keepdim=True)) * norms.sqrt().sqrt()
    order = sorted((float(s), k) for k, s in enumerate(scores.reshape(-1)))
    half = w.numel() // 2
    # The walk sums the norms in another float order: the threshold must not be a near-tie.
    assert order[half][0] - order[half - 1][0] > 1e-5 * order[half][0]
    expected = torch.zeros(w.numel(), dtype=torch.bool)
    expected[[k for _, k in order[:half]]] = True
    assert PRUNERS["ria"].default_group == "matrix"  # the authors' default: one per matrix
    result = get_pruner("ria", batch_size=2).prune(model, tokens, SparsitySpec(0.5))
    assert torch.equal((layer.weight == 0).reshape(-1), expected)
    for report in result.matrices.values():
        assert report["pruned"] == report["numel"] // 2
