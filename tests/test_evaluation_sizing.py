"""Evaluation passes sized by device (issue 21): 32 sequences on a GPU, the CPU unchanged."""

import json

import pytest
from tiny import tiny_model, tiny_tokenizer

from dpruner.evaluation import evaluate_model, sizing
from dpruner.evaluation import runner as runner_module
from dpruner.evaluation.shared_prompt import shared_context_loglikelihoods
from dpruner.evaluation.sizing import continuation_pass_tokens, evaluation_batch_size
from dpruner.specs import domain_of, evaluation


@pytest.mark.parametrize(
    ("configured", "device", "expected"),
    [(None, "cpu", 4), (None, "cuda", 32), (None, "mps", 4), (8, "cuda", 8), (2, "cpu", 2)],
)
def test_batch_size_by_device_unless_configured(configured, device, expected):
    assert evaluation_batch_size(configured, device) == expected


def test_continuation_passes_by_device():
    assert continuation_pass_tokens("cpu") == 256  # the CPU's timed value, unchanged
    # A GPU pass holds 32 items of four choices of 32 tokens.
    assert continuation_pass_tokens("cuda") >= 32 * 4 * 32
    assert continuation_pass_tokens("mps") == 256


def test_evaluate_model_sizes_its_passes_by_the_model_device(tmp_path, monkeypatch):
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran"]
    text = " ".join(words[(i * 5) % len(words)] for i in range(300))
    tokenizer = tiny_tokenizer([text], 300, ["<eos>"], eos_token="<eos>", pad_token="<eos>")
    model = tiny_model("llama", vocab_size=len(tokenizer), layers=1, max_position_embeddings=128)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": text}) + "\n" for i in range(4)))
    section = domain_of(
        {"perplexity": {"source": {"path": str(docs)}, "template": "{text}"}, "tasks": []}, "toy"
    )
    seen = []
    perplexity = runner_module.sliding_window_perplexity

    def spy(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return perplexity(*args, **kwargs)

    monkeypatch.setattr(runner_module, "sliding_window_perplexity", spy)
    written = {"perplexity": {"window": 16, "stride": 16, "rolling_max_tokens": 0}}
    eval_config = evaluation({"evaluation": written})
    result = evaluate_model(model, tokenizer, section, eval_config, seed=0, eval_fraction=0.5)
    assert seen == [4] and result["settings"]["batch_size"] == 4
    # The table decides by the model's device type: as if the CPU's entry were a GPU's.
    monkeypatch.setitem(sizing.BATCH_SIZES, "cpu", 32)
    result = evaluate_model(model, tokenizer, section, eval_config, seed=0, eval_fraction=0.5)
    assert seen[-1] == 32 and result["settings"]["batch_size"] == 32
    configured = evaluation({"evaluation": {**written, "batch_size": 3}})
    assert (
        evaluate_model(model, tokenizer, section, configured, seed=0, eval_fraction=0.5)[
            "settings"
        ]["batch_size"]
        == 3
    )


def test_shared_prompts_take_the_devices_pass_size(monkeypatch):
    budgets = []
    monkeypatch.setattr(
        "dpruner.evaluation.shared_prompt.length_runs",
        lambda lengths, budget: budgets.append(budget) or [range(len(lengths))],
    )
    model = tiny_model("llama", layers=1)
    items = [([1, 2, 3], [[4], [5, 6]]), ([7, 8], [[9], [10]])]
    shared_context_loglikelihoods(model, items)
    monkeypatch.setitem(sizing.CONTINUATION_PASS_TOKENS, "cpu", 999)
    shared_context_loglikelihoods(model, items)
    shared_context_loglikelihoods(model, items, pass_tokens=5)
    assert budgets == [256, 999, 5]
