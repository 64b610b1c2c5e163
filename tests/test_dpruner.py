import math

import pytest
import torch
from tiny import random_scores, random_tokens, tiny_model

from dpruner.calibration import layer_sequential
from dpruner.errors import NonFiniteError
from dpruner.finetune import FineTuneSettings, domain_scores, left_padded_batch
from dpruner.fused_sgd import FusedSGD
from dpruner.masks import SparsitySpec
from dpruner.methods.dpruner import DPrunerPruner, dual_importance_step, general_importance
from dpruner.methods.sparsegpt import HessianStatistics
from dpruner.models import prunable_weights
from dpruner.score_files import save_scores
from dpruner.sgd_step import learning_rate, stochastic_round_to_bf16


class Tokens:
    """A stand-in tokenizer over integer words: enough for the fine-tuning loop."""

    bos_token_id, pad_token_id, eos_token_id = 1, 0, 2

    def __call__(self, text, add_special_tokens=False):
        class Encoded:
            input_ids = [int(w) for w in text.split()]

        return Encoded()


def instances(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(
            str(int(t))
            for t in torch.randint(
                3, 96, (int(torch.randint(6, 12, (1,), generator=g)),), generator=g
            )
        )
        for _ in range(n)
    ]


def unit_importance(model):
    return {n: torch.rand(m.weight.shape) + 0.5 for n, m in prunable_weights(model).items()}


def test_regularised_gradient_equals_autograd_of_the_penalty():
    model = tiny_model("llama", layers=1)
    importance = unit_importance(model)
    settings = FineTuneSettings(lam=0.7, gradient_checkpointing=False)
    sgd = FusedSGD(model, importance, settings)
    sgd.remove()
    with torch.no_grad():
        for module in prunable_weights(model).values():
            module.weight.add_(0.01 * torch.randn_like(module.weight))
    batch = left_padded_batch([[1, 5, 6, 7, 8], [1, 9, 10]], pad_id=0)
    loss = model(**batch).loss
    penalty = sum(
        (importance[n] * (m.weight - sgd.original[n]).pow(2)).sum()
        for n, m in prunable_weights(model).items()
    )
    (loss + settings.lam * penalty).backward()
    expected = {n: m.weight.grad.clone() for n, m in prunable_weights(model).items()}
    model.zero_grad()
    model(**batch).loss.backward()
    for name, module in prunable_weights(model).items():
        got = sgd.regularised_gradient(name, module.weight)
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("clip", ["two_pass", "one_pass"])
def test_fused_step_equals_torch_sgd_with_the_same_clipping(clip, threads):
    texts = instances(4)
    reference = tiny_model("llama", layers=2)
    fused = tiny_model("llama", layers=2)
    settings = FineTuneSettings(
        lam=0.0, lr=0.5, epochs=1, batch_size=4, clip=clip, max_grad_norm=0.05,
        warmup_fraction=0.0, gradient_checkpointing=True,
    )  # fmt: skip
    _, report = domain_scores(fused, Tokens(), texts, None, settings, progress=False)
    assert report["updates"] == 1

    from dpruner.data.tokens import instance_tokens

    sequences, _ = instance_tokens(texts, Tokens(), 1024)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(42)).tolist()
    batch = left_padded_batch([sequences[i] for i in order], pad_id=0)
    optimizer = torch.optim.SGD(reference.parameters(), lr=learning_rate(0, 1, 0.5, 0.0))
    reference.train()
    reference(**batch, use_cache=False).loss.backward()
    if clip == "two_pass":
        total = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        assert float(total) > 0.05, "the test must exercise clipping"
    optimizer.step()
    for (name, a), b in zip(fused.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# Rotary positions are relative, so on llama the shift alone changes only rounding and the
# scored padding position (predicting BOS) is what differs; GPT-2's learned positions shift.
@pytest.mark.parametrize("layout", ["llama", "gpt2"])
def test_a_padded_row_computes_what_it_computes_alone(layout, threads):
    model = tiny_model(layout, layers=2)
    if layout == "llama":
        assert type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"
    sequences = [[1, 5, 6, 7, 8, 9, 10, 11, 12], [1, 13, 14, 15], [1, 16, 17, 18, 19, 20]]
    batch = left_padded_batch(sequences, pad_id=0)
    assert batch["position_ids"][1].tolist() == [0] * 5 + [0, 1, 2, 3]

    def loss_and_grads(inputs):
        model.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    sizes = [len(s) - 1 for s in sequences]  # next-token targets per row
    total = 0.0
    for row, ids in enumerate(sequences):
        alone, alone_grads = loss_and_grads(
            {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids])}
        )
        labels = batch["labels"].clone()
        labels[torch.arange(len(sequences)) != row] = -100  # this row's contribution only
        padded, padded_grads = loss_and_grads({**batch, "labels": labels})
        torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6, msg=f"row {row}")
        for name, grad in alone_grads.items():
            torch.testing.assert_close(
                padded_grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"row {row} {name}"
            )
        total += float(alone) * sizes[row]
    with torch.no_grad():
        batch_loss = float(model(**batch).loss)
    assert batch_loss == pytest.approx(total / sum(sizes), rel=1e-5)


def test_dual_importance_equals_the_formula_for_one_step(threads):
    model = tiny_model("llama", layers=1)
    original = {n: m.weight.detach().clone() for n, m in prunable_weights(model).items()}
    importance = unit_importance(model)
    texts = instances(3)
    settings = FineTuneSettings(lam=0.3, lr=0.1, epochs=1, batch_size=3, clip="two_pass",
                                warmup_fraction=0.0, gradient_checkpointing=False)  # fmt: skip
    probe = tiny_model("llama", layers=1)
    sgd = FusedSGD(probe, importance, settings)
    sgd.remove()
    from dpruner.data.tokens import instance_tokens

    sequences, _ = instance_tokens(texts, Tokens(), 1024)
    order = torch.randperm(3, generator=torch.Generator().manual_seed(42)).tolist()
    batch = left_padded_batch([sequences[i] for i in order], pad_id=0)
    probe(**batch).loss.backward()
    expected = {}
    for name, module in prunable_weights(probe).items():
        g = sgd.regularised_gradient(name, module.weight)
        gw = g * original[name]
        expected[name] = (gw + gw * gw / 2).abs()
    scores, _ = domain_scores(model, Tokens(), texts, importance, settings, progress=False)
    for name in expected:
        torch.testing.assert_close(scores[name], expected[name], rtol=1e-5, atol=1e-9)


def test_general_importance_is_the_saliency_sparsegpt_sees(threads):
    model = tiny_model("llama")
    tokens = random_tokens(4, 16)
    name = "model.layers.0.mlp.down_proj.weight"
    captured = {}

    def keep(full_name, module):
        if full_name == name:
            captured["stats"] = HessianStatistics(module.weight.shape[1], "cpu")
            captured["weight"] = module.weight.detach().clone()
            return captured["stats"]
        return None

    layer_sequential(tiny_model("llama"), tokens, keep, lambda *a: None, batch_size=2)
    importance = general_importance(model, tokens, 0.5, normalize="none", batch_size=2)
    hessian, weight = captured["stats"].hessian, captured["weight"]
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(hessian.shape[0])
    block = 32  # first column block: the original weights, [H_F^-1]_jj with F = columns j..end
    for j in range(0, min(block, weight.shape[1]), 7):
        inverse_jj = torch.linalg.inv(damped[j:, j:])[0, 0]
        torch.testing.assert_close(
            importance[name][:, j], weight[:, j].pow(2) / inverse_jj, rtol=2e-3, atol=1e-8
        )
    normalised = general_importance(tiny_model("llama"), tokens, 0.5, "mean", batch_size=2)
    assert float(normalised[name].mean()) == pytest.approx(1.0, rel=1e-5)


def test_mask_keeps_original_weights_bit_identical(tmp_path):
    model = tiny_model("llama")
    dense = {n: m.weight.detach().clone() for n, m in prunable_weights(model).items()}
    scores = {n: torch.rand(w.shape) for n, w in dense.items()}
    save_scores(scores, tmp_path / "s.safetensors", {"kind": "test"})
    DPrunerPruner(str(tmp_path / "s.safetensors")).prune(model, None, SparsitySpec(0.5))
    for name, module in prunable_weights(model).items():
        kept = module.weight != 0
        assert torch.equal(module.weight[kept], dense[name][kept])
        lowest = scores[name].reshape(-1).sort(stable=True).indices[: scores[name].numel() // 2]
        assert bool((module.weight.reshape(-1)[lowest] == 0).all())


def block_inputs(model, tokens, block: str) -> dict[str, torch.Tensor]:
    """Tokens x d_in inputs of every prunable linear of one block, from the model as it is."""
    inputs, handles = {}, []
    for name, module in prunable_weights(model).items():
        if f".layers.{block}." in name:

            def keep(m, i, o, name=name):
                inputs[name] = i[0].reshape(-1, i[0].shape[-1]).detach().clone()

            handles.append(module.register_forward_hook(keep))
    with torch.no_grad():
        model(input_ids=tokens)
    for handle in handles:
        handle.remove()
    return inputs


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_keeps_the_dpruner_mask_and_lowers_the_layer_error(tmp_path, pattern):
    tokens = random_tokens(4, 16)
    dense = tiny_model("llama")
    scores = random_scores(dense, seed=7)
    save_scores(scores, tmp_path / "s.safetensors", {"kind": "test"})
    # Block 0's linears see the dense model's activations in the repairing walk too.
    inputs = block_inputs(dense, tokens, "0")
    spec = SparsitySpec.parse(0.5, pattern, "matrix")
    plain, repaired = tiny_model("llama"), tiny_model("llama")
    DPrunerPruner(str(tmp_path / "s.safetensors")).prune(plain, None, spec)
    result = DPrunerPruner(str(tmp_path / "s.safetensors"), reconstruct=True, batch_size=2).prune(
        repaired, tokens, spec
    )
    assert set(result.details["reconstruction_proxy"]) == set(scores)
    for name, module in prunable_weights(repaired).items():
        assert torch.equal(module.weight == 0, prunable_weights(plain)[name].weight == 0), name
    models = {"dense": dense, "plain": plain, "repaired": repaired}
    for name, x in inputs.items():
        weights = {k: prunable_weights(m)[name].weight.detach() for k, m in models.items()}
        errors = {
            kind: float(torch.linalg.norm(x @ weights["dense"].t() - x @ weights[kind].t()))
            for kind in ("plain", "repaired")
        }
        assert errors["repaired"] < errors["plain"], (name, errors)


def test_reconstruction_needs_calibration_data(tmp_path):
    from dpruner.errors import DprunerError

    model = tiny_model("llama")
    save_scores(unit_importance(model), tmp_path / "s.safetensors", {})
    with pytest.raises(DprunerError, match="needs calibration data"):
        DPrunerPruner(str(tmp_path / "s.safetensors"), reconstruct=True).prune(
            model, None, SparsitySpec(0.5)
        )


@pytest.mark.parametrize(
    ("scores", "message"),
    [({"x": torch.ones(2)}, "has no scores for 21 matrices"), (None, "have shape \\(2, 2\\)")],
)
def test_mask_checks_the_score_file_before_pruning(tmp_path, scores, message):
    from dpruner.errors import DprunerError

    model = tiny_model("llama")
    if scores is None:
        scores = {n: torch.ones(2, 2) for n in prunable_weights(model)}
    save_scores(scores, tmp_path / "s.safetensors", {})
    dense = {n: m.weight.detach().clone() for n, m in prunable_weights(model).items()}
    with pytest.raises(DprunerError, match=message):
        DPrunerPruner(str(tmp_path / "s.safetensors")).prune(model, None, SparsitySpec(0.5))
    assert all(torch.equal(m.weight, dense[n]) for n, m in prunable_weights(model).items())


def test_same_seed_gives_the_same_scores_twice():
    settings = FineTuneSettings(lam=0.1, lr=0.05, epochs=2, batch_size=2, clip="two_pass")
    texts = instances(5)
    runs = []
    for _ in range(2):
        model = tiny_model("llama").to(torch.bfloat16)
        importance = unit_importance(model)
        torch.manual_seed(0)
        scores, report = domain_scores(model, Tokens(), texts, importance, settings, progress=False)
        runs.append((scores, report))
    assert report["updates"] == 6
    for name in runs[0][0]:
        assert torch.equal(runs[0][0][name], runs[1][0][name])
    changed = runs[0][1]["changed_fraction_per_update"].values()
    assert 0 < max(changed) <= 1, "stochastic rounding moves bf16 weights"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_gradients_give_the_updates_of_the_recomputing_second_pass(dtype):
    # Clipping active (small max_grad_norm), regularised (lambda > 0), several updates: every
    # weight, score, loss and clip scale must be the same bits either way.
    texts = instances(5)
    runs = []
    for keep in (False, True):
        settings = FineTuneSettings(
            lam=0.3, lr=0.1, epochs=2, batch_size=2, clip="two_pass", max_grad_norm=0.05,
            gradient_checkpointing=False, keep_gradients=keep,
        )  # fmt: skip
        model = tiny_model("llama").to(dtype)
        importance = unit_importance(model) if not runs else runs[0][3]
        scores, report = domain_scores(model, Tokens(), texts, importance, settings, progress=False)
        runs.append((model, scores, report, importance))
    (recomputed, s0, r0, _), (kept, s1, r1, _) = runs
    assert r0["updates"] == 6 and min(r0["clip_scales"]) < 1, "the test must exercise clipping"
    assert r0["losses"] == r1["losses"] and r0["clip_scales"] == r1["clip_scales"]
    assert all(torch.equal(s0[name], s1[name]) for name in s0)
    for (name, a), b in zip(recomputed.named_parameters(), kept.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_non_finite_importance_names_the_step_and_layer():
    model = tiny_model("llama")
    importance = unit_importance(model)
    importance["model.layers.1.mlp.up_proj.weight"][0, 0] = math.inf
    settings = FineTuneSettings(lam=0.1, epochs=1, batch_size=2)
    with pytest.raises(NonFiniteError, match="step 0 in model.layers.1.mlp.up_proj.weight"):
        domain_scores(model, Tokens(), instances(2), importance, settings, progress=False)


def test_non_finite_loss_names_the_step():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(math.nan)
    with pytest.raises(NonFiniteError, match="loss nan at step 0"):
        domain_scores(model, Tokens(), instances(2), None, FineTuneSettings(lam=0), progress=False)


def test_schedule_and_score_formula():
    rates = [learning_rate(t, 10, 1.0, 0.2) for t in range(10)]
    assert rates[:3] == [0.5, 1.0, 1.0] and rates[-1] == pytest.approx(1 / 8)
    g, w = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    assert dual_importance_step(g, w).tolist() == [1.5, 1.5]


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200_000,), 1.0 + 2**-9)  # a quarter of the way between two bf16 values
    rounded = stochastic_round_to_bf16(x, torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert float(rounded.mean()) == pytest.approx(1.0 + 2**-9, abs=2e-5)
