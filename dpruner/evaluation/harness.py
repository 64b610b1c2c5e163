"""lm-eval task configs built as Python dicts from evaluation items, and one run over them.

The items are already rendered (items.py), so each task's dataset is an in-memory list handed to
lm-eval through `custom_dataset`. Multiple choice is scored per token, not per character as
lm-eval's acc_norm does: each item carries its candidates' token counts, computed exactly as
HFLM splits context and continuation, and process_results picks the normalised argmax.
"""

from __future__ import annotations

import logging

import datasets
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from dpruner.evaluation.items import TaskItems
from dpruner.evaluation.metrics import (
    ROUGE_TYPES,
    first_line,
    macro_f1,
    normalised_argmax,
    rouge_scores,
)
from dpruner.evaluation.shared_prompt import SharedPromptLM
from dpruner.specs import GenerationSettings

TARGET_DELIMITER = " "
# generation keys of config `evaluation.generation` and their names in lm-eval / transformers
GENERATION_KEYS = {
    "max_new_tokens": "max_gen_toks",
    "do_sample": "do_sample",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repetition_penalty": "repetition_penalty",
}


def _in_memory(rows: list[dict]):
    def load(**_metadata):
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})

    return load


def continuation_tokens(tokenizer, context: str, choice: str) -> int:
    """Token count of `choice` after `context`, split as HFLM._encode_pair splits it."""
    continuation = TARGET_DELIMITER + choice
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    return len(whole) - len(tokenizer(context, add_special_tokens=False)["input_ids"])


def _mean_macro_f1(pairs: list[tuple[int, int]]) -> float:
    gold, predicted = zip(*pairs, strict=True)
    return macro_f1(gold, predicted)


def _majority_prediction_share(predictions: list[int]) -> float:
    return max(predictions.count(p) for p in set(predictions)) / len(predictions)


def _mc_results(doc: dict, results: list[tuple[float, bool]]) -> dict:
    predicted = normalised_argmax([ll for ll, _ in results], doc["choice_tokens"])
    return {
        "acc": float(predicted == doc["gold"]),
        "macro_f1": (doc["gold"], predicted),
        "majority_prediction_share": predicted,
    }


def multiple_choice_task(task: TaskItems, tokenizer, lm_name: str) -> dict:
    rows = [
        {
            **item,
            "choice_tokens": [
                continuation_tokens(tokenizer, item["prompt"], c) for c in item["choices"]
            ],
        }
        for item in task.items
    ]
    return {
        "task": lm_name,
        "custom_dataset": _in_memory(rows),
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": lambda doc: doc["prompt"],
        "doc_to_choice": lambda doc: doc["choices"],
        "doc_to_target": lambda doc: doc["gold"],
        "target_delimiter": TARGET_DELIMITER,
        "process_results": _mc_results,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "macro_f1", "aggregation": _mean_macro_f1, "higher_is_better": True},
            {
                "metric": "majority_prediction_share",
                "aggregation": _majority_prediction_share,
                "higher_is_better": False,
            },
        ],
        "metadata": {"version": 1.0},
    }


def _summary_results(doc: dict, results: list[str]) -> dict:
    return rouge_scores(doc["target"], first_line(results[0]))


def summarization_task(task: TaskItems, generation: GenerationSettings, lm_name: str) -> dict:
    """Generation is not stopped at a newline: a model that opens with one would yield an empty
    summary; first_line cuts after stripping leading whitespace. A key None is lm-eval's."""
    given = {key: getattr(generation, key) for key in GENERATION_KEYS}
    kwargs = {GENERATION_KEYS[key]: value for key, value in given.items() if value is not None}
    return {
        "task": lm_name,
        "custom_dataset": _in_memory(task.items),
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": lambda doc: doc["prompt"],
        "doc_to_target": lambda doc: doc["target"],
        "generation_kwargs": {"until": [], **kwargs},
        "process_results": _summary_results,
        "metric_list": [
            {"metric": name, "aggregation": "mean", "higher_is_better": True}
            for name in ROUGE_TYPES
        ],
        "metadata": {"version": 1.0},
    }


def rolling_perplexity_task(documents: list[str], lm_name: str) -> dict:
    """lm-eval's own word/byte perplexity (disjoint windows of the model's full length)."""
    return {
        "task": lm_name,
        "custom_dataset": _in_memory([{"text": d} for d in documents]),
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": lambda doc: doc["text"],
        "metric_list": [
            {
                "metric": "word_perplexity",
                "aggregation": "weighted_perplexity",
                "higher_is_better": False,
            },
            {
                "metric": "byte_perplexity",
                "aggregation": "weighted_perplexity",
                "higher_is_better": False,
            },
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }


def run_tasks(model, tokenizer, task_configs: list[dict], *, batch_size: int, seed: int) -> dict:
    """{lm-eval task name: {metric: value}} plus `samples` (lm-eval's logged samples)."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    device = str(next(model.parameters()).device)
    lm = SharedPromptLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    output = simple_evaluate(
        model=lm,
        tasks=task_configs,
        task_manager=TaskManager(include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    metrics = {
        task: {
            key.split(",")[0]: value
            for key, value in values.items()
            if "," in key and "_stderr" not in key
        }
        for task, values in output["results"].items()
    }
    return {"metrics": metrics, "samples": output.get("samples", {})}
