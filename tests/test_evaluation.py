"""Evaluation on a tiny random LLaMA with a tiny byte-level BPE tokenizer, data in tmp files."""

import json
import math
import os

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from dpruner.errors import DataError
from dpruner.evaluation import evaluate_domains, evaluate_model
from dpruner.evaluation.harness import (
    continuation_tokens,
    multiple_choice_task,
    run_tasks,
    summarization_task,
)
from dpruner.evaluation.items import TaskItems, fit_prompt, task_items
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.io import FILES_LEDGER
from dpruner.specs import (
    EvaluationSettings,
    GenerationSettings,
    PerplexitySettings,
    Task,
    domain_of,
    evaluate_spec,
)

for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(variable, "1")

WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "in", "parks"] + [
    "and",
    "birds",
    "sang",
    "near",
    "old",
    "trees",
]
EVAL = {"eval_fraction": 0.5, "max_prompt_tokens": 200, "seed": 0}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(
        [" ".join(WORDS)] * 20, 320, ["<eos>"], eos_token="<eos>", pad_token="<eos>"
    )


def tokenizer_model(tokenizer, layout: str = "llama", layers: int = 2):
    """A tiny random model of `layout` over the test tokenizer, <eos> (id 0) as EOS and padding."""
    return tiny_model(
        layout,
        vocab_size=len(tokenizer),
        layers=layers,
        max_position_embeddings=512,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    return tokenizer_model(tokenizer)


def sentence(i: int, n: int = 8) -> str:
    return " ".join(WORDS[(i * 3 + k) % len(WORDS)] for k in range(n))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    """Documents, a labelled classification set and a summarization set, 10 documents each."""
    docs = [{"id": f"d{i}", "text": sentence(i, 30)} for i in range(10)]
    labelled = [
        {"id": f"c{i}", "sentence": sentence(i), "label": ["cats", "dogs", "birds"][i % 3]}
        for i in range(10)
    ]
    labelled.append({"id": "c99", "sentence": "odd one", "label": "fish"})
    summaries = [
        {"id": f"s{i}", "body": sentence(i, 20), "title": sentence(i, 4)} for i in range(10)
    ]
    return {
        "docs": write_jsonl(tmp_path / "docs.jsonl", docs),
        "labelled": write_jsonl(tmp_path / "labelled.jsonl", labelled),
        "summaries": write_jsonl(tmp_path / "summaries.jsonl", summaries),
    }


def mc_entry(corpus, **changes):
    """The config entry of a multiple-choice task."""
    task = {
        "name": "toy_mc",
        "kind": "multiple_choice",
        "source": {"path": corpus["labelled"]},
        "template": "Sentence: {sentence}\nAnimal:",
        "choices": ["cats", "dogs", "birds"],
        "label_field": "label",
        # c99's "fish" is in no choice: left out on purpose.
        "skip_labels": ["fish"],
        "limit": 4,
    }
    return {**task, **changes}


def mc_task(corpus, **changes) -> Task:
    return Task.from_config(mc_entry(corpus, **changes), "test")


def section(corpus):
    return {
        "calibration": [],
        "perplexity": {"source": {"path": corpus["docs"]}, "template": "{text}"},
        "tasks": [
            mc_entry(corpus),
            {
                "name": "toy_sum",
                "kind": "summarization",
                "source": {"path": corpus["summaries"]},
                "template": "Text: {body}\nTitle:",
                "target_field": "title",
                "limit": 2,
            },
        ],
    }


def independent_perplexity(model, ids, window, stride):
    """exp of the mean token NLL, each token scored once, through the model's own `labels` loss."""
    total_nll, total_tokens, scored_until = 0.0, 0, 0
    for start in range(0, len(ids) - window + 1, stride):
        inputs = ids[start : start + window].unsqueeze(0)
        labels = inputs.clone()
        labels[0, : max(scored_until - start, 0)] = -100  # already scored by an earlier window
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            total_nll += model(input_ids=inputs, labels=labels).loss.item() * n
        total_tokens += n
        scored_until = start + window
    return math.exp(total_nll / total_tokens)


@pytest.mark.parametrize("window,stride", [(16, 16), (16, 4)])
def test_sliding_window_perplexity_equals_an_independent_computation(
    model, window, stride, threads
):
    ids = torch.randint(
        0, model.config.vocab_size, (70,), generator=torch.Generator().manual_seed(1)
    )
    result = sliding_window_perplexity(model, ids, window, stride, batch_size=3, progress=False)
    assert result["ppl"] == pytest.approx(
        independent_perplexity(model, ids, window, stride), rel=1e-5
    )
    # disjoint: 4 windows of 15 predicted tokens; overlapping: 15, then 4 new ones in 13 windows
    assert result["tokens_scored"] == (4 * 15 if stride == window else 15 + 13 * 4)


def test_continuation_tokens_split_as_lm_eval_splits(model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu")
    for context, choice in [("Animal:", "cats"), ("Animal: ", "big dogs"), ("x", "the parks")]:
        _, continuation = lm._encode_pair(context, " " + choice)
        assert continuation_tokens(tokenizer, context, choice) == len(continuation)


def loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, int]:
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([whole])).logits.log_softmax(-1)[0]
    total = sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
    return total, len(whole) - len(ctx)


def test_multiple_choice_picks_the_highest_per_token_loglikelihood(model, tokenizer, threads):
    prompt, choices = "the cat sat on", ["a mat while dogs ran", "parks"]
    scores = [loglikelihood(model, tokenizer, prompt, " " + c) for c in choices]
    per_token = [total / n for total, n in scores]
    expected = max(range(2), key=per_token.__getitem__)
    # The harness scores in another float order (spread about 1e-6): a closer pair could rightly
    # pick the other choice (measured: 0.027 apart).
    assert abs(per_token[0] - per_token[1]) > 1e-4, "a near-tie"
    items = [
        {"id": "right", "prompt": prompt, "choices": choices, "gold": expected},
        {"id": "wrong", "prompt": prompt, "choices": choices, "gold": 1 - expected},
    ]
    task = TaskItems(name="hand", kind="multiple_choice", items=items)
    config = multiple_choice_task(task, tokenizer, "dpruner_hand")
    metrics = run_tasks(model, tokenizer, [config], batch_size=2, seed=0)["metrics"]
    assert metrics["dpruner_hand"]["acc"] == 0.5
    # gold (expected, 1 - expected), both predicted `expected`: F1 2/3 and 0 for the two classes
    assert metrics["dpruner_hand"]["macro_f1"] == pytest.approx(1 / 3)
    assert metrics["dpruner_hand"]["majority_prediction_share"] == 1.0


@pytest.mark.parametrize("layout", ["llama", "gemma3_text"])
def test_shared_prompt_scores_equal_lm_evals_per_choice_scores(layout, tokenizer):
    """Batched shared prompts (contexts of different lengths left-padded in one batch, items
    with different numbers of choices) against lm-eval's per-choice scores and a direct pass."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from dpruner.evaluation.shared_prompt import SharedPromptLM

    model = tokenizer_model(tokenizer, layout, layers=3)  # Gemma-3 needs 3 layer types
    pairs = [
        ("the cat sat on", " a mat while dogs ran"),
        ("the cat sat on", " parks"),
        ("the cat sat on", " old trees and birds"),
        ("birds sang near", " a"),
        ("birds sang near", " old trees"),
        ("dogs ran in", " the parks and the old trees sang"),  # a context of its own
    ]
    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    per_choice = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    shared = SharedPromptLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    expected = per_choice.loglikelihood(requests, disable_tqdm=True)
    scores = shared.loglikelihood(requests, disable_tqdm=True)
    assert [greedy for _, greedy in scores] == [greedy for _, greedy in expected]
    assert [ll for ll, _ in scores] == pytest.approx([ll for ll, _ in expected], abs=1e-4)
    direct = [loglikelihood(model, tokenizer, *pair)[0] for pair in pairs]
    assert [ll for ll, _ in scores] == pytest.approx(direct, abs=1e-4)


@pytest.mark.parametrize("layout", ["llama", "gpt2", "opt"])
def test_batched_shared_prompts_equal_each_item_alone(layout, threads):
    """Contexts of different lengths left-padded into one batch, items with different numbers of
    choices: each score equals the item scored alone (absolute-position models included, whose
    scores move if a padded row's positions do not start at 0)."""
    from dpruner.evaluation.shared_prompt import shared_context_loglikelihoods

    model = tiny_model(layout, vocab_size=96, layers=3, max_position_embeddings=512)
    items = [
        ([5, 6, 7, 8, 9, 10], [[11, 12], [13]]),
        ([20, 21], [[22, 23, 24], [25, 26], [27]]),
        ([30, 31, 32], [[33], [34]]),
    ]
    alone = [shared_context_loglikelihoods(model, [item], pass_tokens=1)[0] for item in items]
    # one continuation pass for all rows; rows of one length per pass; every row in its own pass
    for pass_tokens in (256, 4, 1):
        batched = shared_context_loglikelihoods(model, items, pass_tokens=pass_tokens)
        assert [len(scores) for scores in batched] == [2, 3, 2]
        for together, single in zip(batched, alone, strict=True):
            assert [greedy for _, greedy in together] == [greedy for _, greedy in single]
            assert [ll for ll, _ in together] == pytest.approx([ll for ll, _ in single], abs=1e-5)


def test_length_runs_keep_each_padded_pass_within_the_budget():
    from dpruner.evaluation.shared_prompt import length_runs

    lengths = [1, 1, 2, 2, 2, 5, 9, 30]
    runs = length_runs(lengths, budget=10)
    assert [list(run) for run in runs] == [[0, 1, 2, 3, 4], [5], [6], [7]]
    assert [i for run in runs for i in run] == list(range(len(lengths)))
    assert all(len(run) * lengths[run[-1]] <= 10 for run in runs if len(run) > 1)
    assert length_runs([3] * 6, budget=100) == [range(0, 6)]
    assert length_runs([], budget=10) == []


def test_task_items_drop_labels_outside_the_choices_and_shuffle_with_the_seed(corpus, tokenizer):
    task = mc_task(corpus, limit=None, skip_labels=[])
    with pytest.raises(DataError, match="1 of 11 records read were dropped"):
        task_items(task, tokenizer, eval_fraction=0.99, max_prompt_tokens=None, seed=0)
    items = task_items(
        task, tokenizer, eval_fraction=0.99, max_prompt_tokens=None, seed=0, max_dropped=0.1
    )
    assert items.counts["dropped_label_not_in_choices"] == 1
    assert items.counts["items"] == 10
    task = mc_task(corpus, limit=None)
    again = task_items(task, tokenizer, eval_fraction=0.99, max_prompt_tokens=None, seed=0)
    other = task_items(task, tokenizer, eval_fraction=0.99, max_prompt_tokens=None, seed=1)
    assert [i["id"] for i in items.items] == [i["id"] for i in again.items]
    assert [i["id"] for i in items.items] != [i["id"] for i in other.items]


def test_task_items_come_from_the_evaluation_part_only(corpus, tokenizer):
    items = task_items(mc_task(corpus, limit=None), tokenizer, **EVAL)
    # ids c0..c9, c99 sorted: the last half (c5..c9, c99) is held out; c99's label is skipped
    assert sorted(i["id"] for i in items.items) == ["c5", "c6", "c7", "c8", "c9"]


def test_long_prompts_are_cut_inside_the_field_and_keep_the_question(tokenizer):
    record = {"id": "1", "text": sentence(0, 200)}
    prompt, cut = fit_prompt("Text: {text}\nAnswer:", record, tokenizer, 40, "task 't'")
    assert cut and prompt.startswith("Text: the") and prompt.endswith("\nAnswer:")
    assert len(tokenizer(prompt)["input_ids"]) <= 40


def test_a_missing_source_file_names_the_task(tmp_path, corpus, tokenizer):
    task = mc_task(corpus, source={"path": str(tmp_path / "absent.jsonl")})
    with pytest.raises(DataError, match=r"task 'toy_mc'.*absent\.jsonl"):
        task_items(task, tokenizer, **EVAL)


def test_a_template_field_missing_from_the_records_names_the_task_and_field(corpus, tokenizer):
    task = mc_task(corpus, template="Sentence: {sentense}\nAnimal:")
    with pytest.raises(DataError, match=r"task 'toy_mc'.*'sentense'"):
        task_items(task, tokenizer, **EVAL)


def test_a_missing_label_field_names_the_task_and_field(corpus, tokenizer):
    with pytest.raises(DataError, match=r"task 'toy_mc'.*'animal'"):
        task_items(mc_task(corpus, label_field="animal"), tokenizer, **EVAL)


def test_generation_passes_the_keys_set_and_leaves_the_others_to_lm_eval():
    task = TaskItems(name="t", kind="summarization", items=[])
    kwargs = summarization_task(task, GenerationSettings(), "t")["generation_kwargs"]
    assert kwargs == {
        "until": [],
        "max_gen_toks": GenerationSettings().max_new_tokens,
        "do_sample": False,
    }
    sampled = GenerationSettings(max_new_tokens=8, do_sample=True, top_k=50, seed=3)
    kwargs = summarization_task(task, sampled, "t")["generation_kwargs"]
    # `seed` seeds the run (runner.evaluate_model), not a generation kwarg.
    assert kwargs == {"until": [], "max_gen_toks": 8, "do_sample": True, "top_k": 50}


def test_evaluate_model_reports_every_metric_and_count(model, tokenizer, corpus):
    settings = EvaluationSettings(
        perplexity=PerplexitySettings(window=16, stride=8, max_tokens=100, rolling_max_tokens=60),
        max_prompt_tokens=64,
        generation=GenerationSettings(max_new_tokens=4),
        batch_size=2,
    )
    result = evaluate_model(
        model, tokenizer, domain_of(section(corpus), "toy"), settings, seed=0, eval_fraction=0.5
    )
    ppl = result["perplexity"]["domain"]
    assert ppl["tokens_scored"] == 15 + 8 * 10 and ppl["window"] == 16
    assert ppl["lm_eval_rolling"]["word_perplexity"] > 1
    mc = result["tasks"]["toy_mc"]
    assert mc["counts"]["items"] == 4 and set(mc["metrics"]) >= {"acc", "macro_f1"}
    # Per-item scores for the report's intervals: the same accuracy, item by item.
    items = mc["per_item"]
    assert [set(item) for item in items] == [{"id", "gold", "predicted"}] * 4
    assert sum(i["gold"] == i["predicted"] for i in items) / 4 == mc["metrics"]["acc"]
    assert len(result["tasks"]["toy_sum"]["per_item"]) == 2
    assert mc["chance"]["uniform"] == pytest.approx(1 / 3)
    summary = result["tasks"]["toy_sum"]
    assert 0 <= summary["metrics"]["rougeL"] <= 1 and len(summary["examples"]) == 2
    assert result["settings"]["perplexity"]["bos"] == "none"  # default filled in


def test_evaluate_domains_writes_one_metrics_json_per_domain(tmp_path, model, tokenizer, corpus):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    general = {
        "calibration": [],
        "perplexity": {"source": {"path": corpus["summaries"]}, "template": "{body}"},
        "tasks": [],
    }
    config = {
        "seed": 0,
        "calibration": {"eval_fraction": 0.5},
        "general": general,
        "domains": {"toy": {**section(corpus), "tasks": section(corpus)["tasks"][:1]}},
        "evaluation": {
            "perplexity": {"window": 16, "stride": 16, "max_tokens": 64, "rolling_max_tokens": 0},
            "batch_size": 2,
        },
    }
    out, general_out = tmp_path / "metrics" / "toy.json", tmp_path / "metrics" / "general.json"
    spec = evaluate_spec(config, {"toy": ("perplexity", "tasks"), "general": ("perplexity",)})
    evaluate_domains(str(model_dir), ["toy", "general"], spec, [str(out), str(general_out)])
    assert json.loads(general_out.read_text())["domain"] == "general"
    written = json.loads(out.read_text())
    assert written["device"] == "cpu"
    assert set(written["perplexity"]) == {"domain"}  # general: once, in general.json
    assert written["sparsity"]["sparsity_linear"] == 0.0
    assert written["tasks"]["toy_mc"]["counts"]["items"] == 4
    assert written["config"]["evaluation"]["perplexity"]["max_tokens"] == 64
    assert written["config"]["domain"]["tasks"][0]["name"] == "toy_mc"
    # no temporary file left behind; the ledger says dpruner wrote both (dpruner.io)
    assert sorted(out.parent.iterdir()) == sorted([out, general_out, out.parent / FILES_LEDGER])
