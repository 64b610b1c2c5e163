"""Evaluate one model on its domains: each one's perplexity and every configured task.

General perplexity is the perplexity of the `general` section's evaluation of the same model;
the report copies it next to every domain (report.collect), so it is computed once per model.

All items are built and checked first (items.py), then one lm-eval run scores the tasks and the
rolling perplexities, and the suite's own sliding window gives the paper's perplexity.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import torch

from dpruner.evaluation.items import perplexity_documents, scaled, task_items
from dpruner.evaluation.metrics import ROUGE_TYPES, first_line, majority_rate
from dpruner.evaluation.perplexity import sliding_window_perplexity
from dpruner.evaluation.sizing import evaluation_batch_size
from dpruner.io import write_json
from dpruner.specs import Domain, EvaluationSettings

SUMMARY_EXAMPLES = 3
ROLLING_TASK = "dpruner_domain_rolling"


def _chance(items: list[dict]) -> dict:
    gold = [item["gold"] for item in items]
    sizes = {len(item["choices"]) for item in items}
    uniform = 1 / sizes.pop() if len(sizes) == 1 else None
    return {"uniform": uniform, "majority": majority_rate(gold)}


def _summary_examples(samples: list[dict]) -> list[dict]:
    return [
        {"reference": s["doc"]["target"], "prediction": first_line(s["resps"][0][0])}
        for s in samples[:SUMMARY_EXAMPLES]
    ]


def evaluate_model(
    model,
    tokenizer,
    domain: Domain,
    settings: EvaluationSettings,
    *,
    seed: int,
    eval_fraction: float,
    progress: bool = True,
) -> dict:
    """Metrics of an in-memory model on one domain's perplexity text and tasks.

    Returns {"perplexity": {"domain": ...}, "tasks": {name: {...}},
    "settings": the evaluation values used, the batch size the device's where `settings`
    leaves it out}.
    """
    # Imported here: lm-eval takes seconds to import.
    from dpruner.evaluation.harness import (
        multiple_choice_task,
        rolling_perplexity_task,
        run_tasks,
        summarization_task,
    )

    device_type = next(model.parameters()).device.type
    settings = replace(settings, batch_size=evaluation_batch_size(settings.batch_size, device_type))
    ppl_cfg, scale = settings.perplexity, settings.scale
    max_tokens = scaled(ppl_cfg.max_tokens, scale)

    # Build everything first: a bad source or template stops here, before any model work.
    documents, joined = perplexity_documents(
        domain.perplexity,
        "domain perplexity",
        tokenizer,
        eval_fraction=eval_fraction,
        max_tokens=max_tokens,
    )
    tasks = [
        task_items(
            task,
            tokenizer,
            eval_fraction=eval_fraction,
            max_prompt_tokens=settings.max_prompt_tokens,
            seed=seed,
            scale=scale,
            max_dropped=settings.max_dropped_fraction,
        )
        for task in domain.tasks or []
    ]

    lm_configs = []
    rolling_docs = _rolling_subset(documents, tokenizer, ppl_cfg.rolling_max_tokens)
    if rolling_docs:
        lm_configs.append(rolling_perplexity_task(rolling_docs, ROLLING_TASK))
    for task in tasks:
        if task.kind == "multiple_choice":
            lm_configs.append(multiple_choice_task(task, tokenizer, f"dpruner_{task.name}"))
        else:
            lm_configs.append(summarization_task(task, settings.generation, f"dpruner_{task.name}"))
    # `generation.seed` seeds sampling (the paper's settings); the run's seed otherwise.
    sampling_seed = seed if settings.generation.seed is None else settings.generation.seed
    # lm-eval refuses an empty task list: a perplexity-only section (another domain's model,
    # rolling perplexity off) never calls it.
    harness = {"metrics": {}, "samples": {}}
    if lm_configs:
        harness = run_tasks(
            model, tokenizer, lm_configs, batch_size=settings.batch_size, seed=sampling_seed
        )

    ids = torch.tensor(tokenizer(joined, add_special_tokens=False)["input_ids"])
    if max_tokens is not None:
        ids = ids[:max_tokens]
    measured = sliding_window_perplexity(
        model,
        ids,
        ppl_cfg.window,
        ppl_cfg.stride,
        bos_id=tokenizer.bos_token_id,
        bos=ppl_cfg.bos,
        batch_size=settings.batch_size,
        progress=progress,
    )
    measured["documents"] = len(documents)
    if rolling_docs:
        measured["lm_eval_rolling"] = {
            **harness["metrics"][ROLLING_TASK],
            "documents": len(rolling_docs),
        }

    results = {}
    for task in tasks:
        lm_name = f"dpruner_{task.name}"
        entry = {
            "kind": task.kind,
            "metrics": harness["metrics"][lm_name],
            "counts": task.counts,
            "per_item": per_item_scores(task.kind, harness["samples"].get(lm_name, [])),
        }
        if task.kind == "multiple_choice":
            entry["chance"] = _chance(task.items)
            if task.choices is not None:
                entry["choices"] = task.choices
        else:
            entry["examples"] = _summary_examples(harness["samples"].get(lm_name, []))
        results[task.name] = entry
    return {"perplexity": {"domain": measured}, "tasks": results, "settings": asdict(settings)}


def per_item_scores(kind: str, samples: list[dict]) -> list[dict]:
    """Each item's id and score, in item order, for the report's bootstrap intervals: gold and
    predicted choice (multiple choice), ROUGE F-measures (summarization)."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        if kind == "multiple_choice":
            gold, predicted = sample["macro_f1"]
            rows.append({"id": sample["doc"]["id"], "gold": gold, "predicted": predicted})
        else:
            rows.append({"id": sample["doc"]["id"], **{k: sample[k] for k in ROUGE_TYPES}})
    return rows


def _rolling_subset(documents: list[str], tokenizer, max_tokens: int | None) -> list[str]:
    """Leading documents within `max_tokens` tokens (at least one), to keep lm-eval's extra
    rolling perplexity cheap; 0 turns it off."""
    if max_tokens == 0:
        return []
    chosen, total = [], 0
    for document in documents:
        total += len(tokenizer(document, add_special_tokens=False)["input_ids"])
        if chosen and max_tokens is not None and total > max_tokens:
            break
        chosen.append(document)
    return chosen


def evaluate_domains(model_dir: str, domains: list[str], spec, outs: list[str]) -> dict:
    """`python -m dpruner evaluate`: load the model once onto the spec's device, evaluate it on
    each of `domains` (its perplexity and tasks) and write every metric, count and config value
    used to the matching file of `outs`. Every domain's data is checked before the model loads.
    `spec`: dpruner.specs.EvaluateSpec.

    Returns {domain: metrics}."""
    from dpruner.errors import ConfigError
    from dpruner.models import load_model, measured_sparsity
    from dpruner.preflight import check_evaluation

    if len(domains) != len(outs) or not domains:
        raise ConfigError(
            f"evaluate needs one --out per --domain, got {len(domains)} domains, {len(outs)} outs"
        )
    check_evaluation(spec, domains)
    model, tokenizer = load_model(model_dir, spec.evaluation.dtype, spec.device)
    sparsity = measured_sparsity(model)
    results = {}
    for domain, out in zip(domains, outs, strict=True):
        started = time.perf_counter()
        metrics = evaluate_model(
            model,
            tokenizer,
            spec.domains[domain],
            spec.evaluation,
            seed=spec.seed,
            eval_fraction=spec.eval_fraction,
        )
        used = metrics.pop("settings")
        results[domain] = {
            "model": str(model_dir),
            "device": str(next(model.parameters()).device),
            "domain": domain,
            "sparsity": sparsity,
            **metrics,
            "config": {
                "seed": spec.seed,
                "eval_fraction": spec.eval_fraction,
                "evaluation": used,
                "domain": spec.domains[domain].section(),
            },
            "wall_s": round(time.perf_counter() - started, 1),
        }
        write_json(results[domain], out)
    return results
