import pytest
import torch
from tiny import LAYOUTS, layer_inputs, random_tokens, tiny_model

from dpruner.masks import SparsitySpec, prune_mask
from dpruner.methods import get_pruner
from dpruner.methods.sparsegpt import DampingError, inverse_hessian_factor, sparsegpt_sweep
from dpruner.methods.wanda import wanda_scores
from dpruner.models import load_model, prunable_weights, save_model

METHODS = [("magnitude", "matrix"), ("wanda", "row"), ("sparsegpt", "block")]


def correlated_layer(d_out=24, d_in=64, tokens=512, seed=0):
    """A layer whose inputs have outlier channels and correlations, as real activations do."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d_in, d_in, generator=g) / d_in**0.5
    scales = torch.ones(d_in)
    scales[:4] = 20.0
    inputs = (torch.randn(tokens, d_in, generator=g) @ mixing + 0.1) * scales
    weight = torch.randn(d_out, d_in, generator=g)
    return weight, inputs


def reconstruction_error(weight, pruned, inputs):
    return float(torch.linalg.norm(inputs @ weight.t() - inputs @ pruned.t()))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_the_layer_better_than_magnitude_and_wanda(pattern, threads):
    weight, inputs = correlated_layer()
    hessian = 2 * inputs.t() @ inputs / inputs.shape[0]
    spec = SparsitySpec.parse(0.5, pattern, "block")
    result = sparsegpt_sweep(weight, hessian, spec, block_size=16)
    errors = {"sparsegpt": reconstruction_error(weight, result.weight, inputs)}
    for name, scores, group in [
        ("magnitude", weight.abs(), "matrix"),
        ("wanda", wanda_scores(weight, inputs.pow(2).mean(0)), "row"),
    ]:
        mask = prune_mask(scores, SparsitySpec.parse(0.5, pattern, group))
        errors[name] = reconstruction_error(weight, weight.masked_fill(mask, 0), inputs)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert bool((result.weight[result.mask] == 0).all())
    assert int(result.mask.sum()) == weight.numel() // 2


def test_wanda_mask_equals_brute_force_on_the_first_layer(threads):
    model = tiny_model("llama")
    tokens = random_tokens(3, 16)
    name = "model.layers.0.self_attn.q_proj.weight"
    layer = prunable_weights(model)[name]
    inputs = layer_inputs(model, layer, tokens)
    weight = layer.weight.detach().clone()
    d_out, d_in = weight.shape
    expected = torch.zeros(d_out, d_in, dtype=torch.bool)
    for i in range(d_out):
        scores = sorted(
            (abs(float(weight[i, j])) * (float(inputs[:, j].pow(2).sum()) / 3) ** 0.5, j)
            for j in range(d_in)
        )
        for _, j in scores[: d_in // 2]:
            expected[i, j] = True
        # The pruner sums the norms batch by batch, in another float order (relative spread
        # about 1e-7): the scores either side of each row's threshold must be further apart
        # than that, or the two masks may rightly differ there (measured: 2.6e-3 apart).
        last_pruned, first_kept = scores[d_in // 2 - 1][0], scores[d_in // 2][0]
        assert first_kept - last_pruned > 1e-5 * first_kept, f"row {i}: a near-tie"
    get_pruner("wanda", batch_size=2).prune(model, tokens, SparsitySpec(0.5, "row"))
    assert torch.equal(layer.weight == 0, expected)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("method", "group"), METHODS)
def test_every_method_reaches_the_target_on_every_layout(layout, method, group):
    model = tiny_model(layout)
    result = get_pruner(method).prune(model, random_tokens(4, 16), SparsitySpec(0.5, group))
    assert result.sparsity_linear >= 0.5
    assert set(result.matrices) == set(prunable_weights(model))
    for name, module in prunable_weights(model).items():
        assert float((module.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02), name


@pytest.mark.parametrize(("method", "group"), METHODS)
def test_nm_pattern_holds_in_every_row(method, group):
    model = tiny_model("llama")
    get_pruner(method).prune(model, random_tokens(4, 16), SparsitySpec.parse(0.5, "2:4", group))
    for module in prunable_weights(model).values():
        zeros = (module.weight == 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
        assert bool((zeros >= 2).all())


def test_prune_save_load_gives_the_same_outputs(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama")
    get_pruner("sparsegpt").prune(model, random_tokens(4, 16), SparsitySpec(0.5, "block"))
    vocab = {f"t{i}": i for i in range(96)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    )
    save_model(model, tokenizer, tmp_path / "pruned")
    loaded, _ = load_model(tmp_path / "pruned")
    tokens = random_tokens(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=tokens).logits, loaded(input_ids=tokens).logits)


def test_failed_cholesky_is_retried_with_more_damping():
    hessian = torch.diag(torch.tensor([1.0, 1.0, -0.05]))
    _, damp = inverse_hessian_factor(hessian, 0.01, 1.0, "layer")
    assert damp == pytest.approx(0.1)
    with pytest.raises(DampingError, match="model.layers.0.mlp.up_proj.*nsamples"):
        inverse_hessian_factor(
            torch.diag(torch.tensor([1.0, 1.0, -5.0])), 0.01, 1.0, "model.layers.0.mlp.up_proj"
        )


def test_sparsegpt_reports_the_damping_it_needed(monkeypatch):
    import dpruner.methods.sparsegpt as sparsegpt

    real = sparsegpt.inverse_hessian_factor

    def bump(hessian, percdamp, max_damp, where):
        upper, _ = real(hessian, 0.1, max_damp, where)
        return upper, 0.1

    monkeypatch.setattr(sparsegpt, "inverse_hessian_factor", bump)
    result = get_pruner("sparsegpt").prune(
        tiny_model("llama"), random_tokens(2, 16), SparsitySpec(0.5, "block")
    )
    assert len(result.warnings) == 21 and "damping 0.1" in result.warnings[0]


def test_calibrated_methods_need_calibration_data():
    from dpruner.errors import DprunerError

    with pytest.raises(DprunerError, match="needs calibration data"):
        get_pruner("wanda").prune(tiny_model("llama"), None, SparsitySpec(0.5, "row"))


def test_sweep_with_a_prefix_mask_is_the_per_row_least_squares_repair(threads):
    # In every row the pruned columns come first: the OBS sweep then passes each pruned weight's
    # error to all kept weights, so W' is argmin ||XW^T - XW'^T|| per row with the mask fixed.
    # The column blocks of 5 (d_in 12) exercise the lazy update across blocks.
    g = torch.Generator().manual_seed(1)
    d_out, d_in, tokens = 6, 12, 200
    inputs = torch.randn(tokens, d_in, generator=g, dtype=torch.float64)
    weight = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    pruned_prefix = [6, 3, 9, 6, 5, 7]  # 36 of 72 weights
    mask = torch.arange(d_in).unsqueeze(0) < torch.tensor(pruned_prefix).unsqueeze(1)
    hessian = (2 * inputs.t() @ inputs / tokens).float()
    result = sparsegpt_sweep(
        weight, hessian, SparsitySpec(0.5), percdamp=1e-9, block_size=5, mask=mask
    )
    assert torch.equal(result.mask, mask)
    for row, k in enumerate(pruned_prefix):
        kept = torch.linalg.lstsq(inputs[:, k:], inputs @ weight[row]).solution
        torch.testing.assert_close(result.weight[row, k:].double(), kept, rtol=1e-3, atol=1e-4)
        assert bool((result.weight[row, :k] == 0).all())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sweep_keeps_a_given_mask_and_repairs_below_plain_masking(pattern, threads):
    weight, inputs = correlated_layer()
    hessian = 2 * inputs.t() @ inputs / inputs.shape[0]
    spec = SparsitySpec.parse(0.5, pattern, "matrix")
    scores = torch.rand(weight.shape, generator=torch.Generator().manual_seed(3))
    mask = prune_mask(scores, spec)
    result = sparsegpt_sweep(weight, hessian, spec, block_size=16, mask=mask)
    assert torch.equal(result.mask, mask)
    assert bool((result.weight[mask] == 0).all()) and bool((result.weight[~mask] != 0).all())
    repaired = reconstruction_error(weight, result.weight, inputs)
    plain = reconstruction_error(weight, weight.masked_fill(mask, 0), inputs)
    assert repaired < 0.9 * plain, (repaired, plain)
