"""Evaluation items of one configured task or perplexity corpus, built before any model runs.

Everything that can be wrong in a task (missing source, missing field, unknown kind, a gold label
outside the choices) is found here, so `evaluate` stops with one message naming the task and the
field before long work starts. Items come only from the evaluation part of each source (disjoint
by document id from every calibration document) unless the task says `holdout: false` (a hub test
split, disjoint from calibration by construction).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from dpruner.data import evaluation_text, load_records, render, split_records, template_fields
from dpruner.data.templates import joined_fields
from dpruner.errors import ConfigError, DataError
from dpruner.specs import EvaluationSettings, PerplexityText, Task


@dataclass
class TaskItems:
    """The items of one task and how many records each filter removed."""

    name: str
    kind: str
    items: list[dict]
    counts: dict = field(default_factory=dict)
    choices: list[str] | None = None  # the fixed choices, None when each item has its own


def evaluation_records(
    source: dict, where: str, eval_fraction: float, holdout: bool = True
) -> list[dict]:
    try:
        records = load_records(source)
    except DataError as error:
        raise DataError(f"{where}: {error}") from None
    if not holdout:
        return records
    return split_records(records, "evaluation", eval_fraction, where=where)


def scaled(value: int | None, scale: float) -> int | None:
    """A size limit multiplied by `evaluation.scale` (None stays unlimited)."""
    return None if value is None else max(1, math.ceil(value * scale))


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(
    template: str, record: dict, tokenizer, max_tokens: int | None, where: str
) -> tuple[str, bool]:
    """The rendered prompt, with its longest field cut from the end so that the prompt keeps at
    most `max_tokens` tokens; the template's own text (the question) is never cut."""
    record = joined_fields(record)
    prompt = render(template, record, where)
    if max_tokens is None:
        return prompt, False
    excess = n_tokens(tokenizer, prompt) - max_tokens
    if excess <= 0:
        return prompt, False
    text_fields = [name for name in template_fields(template) if isinstance(record[name], str)]
    if not text_fields:
        return prompt, False
    longest = max(text_fields, key=lambda name: len(record[name]))
    ids = tokenizer(str(record[longest]), add_special_tokens=False)["input_ids"]
    margin = 0
    # Token boundaries can move where the cut text meets the template, so retry with a margin.
    while excess > 0:
        keep = max(len(ids) - excess - margin, 0)
        shortened = {**record, longest: tokenizer.decode(ids[:keep]).rstrip()}
        prompt = render(template, shortened, where)
        excess = n_tokens(tokenizer, prompt) - max_tokens
        if keep == 0:
            break
        margin = 2 * margin + 1
    return prompt, True


def _field(record: dict, name: str, where: str):
    if name not in record:
        raise DataError(
            f"{where}: field '{name}' not in the source's records (fields: {sorted(record)})"
        )
    return record[name]


def gold_label(
    task: Task, record: dict, where: str
) -> tuple[list[str], list[str], str, int | None]:
    """(choices, labels, the record's label, its index among the labels or None when it matches
    none)."""
    choices = _item_choices(task, record, where)
    labels = [str(v) for v in task.labels or choices]
    if len(labels) != len(choices):
        raise ConfigError(
            f"{where}: 'labels' has {len(labels)} entries but there are {len(choices)} choices"
        )
    label = str(_field(record, task.label_field, where)).strip()
    return choices, labels, label, labels.index(label) if label in labels else None


def _item_choices(task: Task, record: dict, where: str) -> list[str]:
    if task.choices:
        return [str(c) for c in task.choices]
    choices_field = task.choices_field
    if isinstance(choices_field, list):
        return [str(_field(record, name, where)) for name in choices_field]
    value = _field(record, choices_field, where)
    return [str(c) for c in value] if isinstance(value, list) else str(value).split("\n")


@dataclass
class Reading:
    """The records a task reads: the usable ones with their item fields (choices and gold, or
    target), the value of each dropped one (a label that matches no label, an empty target) and
    how many had a label of `skip_labels`."""

    usable: list[tuple[dict, dict]]
    dropped: list[str]
    skipped: int

    def too_many_dropped(self, max_dropped: float) -> bool:
        """More than `max_dropped` of the records read (skipped ones aside) were dropped."""
        return len(self.dropped) > max_dropped * (len(self.usable) + len(self.dropped))


def read_records(
    task: Task, records: list[dict], where: str, *, seed: int, limit: int | None
) -> Reading:
    """The records `evaluate` reads for a task: its evaluation records after a seeded shuffle,
    until `limit` are usable. The preflight reads the same ones, so both judge the same
    share of dropped records."""
    records = list(records)
    random.Random(seed).shuffle(records)
    reading = Reading([], [], 0)
    skip = {str(v) for v in task.skip_labels}
    for record in records:
        if limit is not None and len(reading.usable) >= limit:
            break
        if task.kind == "multiple_choice":
            choices, _, label, gold = gold_label(task, record, where)
            if label in skip:
                reading.skipped += 1
            elif gold is None:
                reading.dropped.append(label)
            else:
                reading.usable.append((record, {"choices": choices, "gold": gold}))
            continue
        target = str(_field(record, task.target_field, where)).strip()
        if target:
            reading.usable.append((record, {"target": target}))
        else:
            reading.dropped.append(target)
    return reading


def task_items(
    task: Task,
    tokenizer,
    *,
    eval_fraction: float,
    max_prompt_tokens: int | None,
    seed: int,
    scale: float = 1.0,
    max_dropped: float = EvaluationSettings.max_dropped_fraction,
) -> TaskItems:
    """Items of one configured task: the evaluation records after a seeded shuffle, invalid
    labels dropped (counted; more than `max_dropped` of the records read is an error), then the
    first `limit` (times `scale`). The task's own `max_prompt_tokens` overrides the global one."""
    where = f"task '{task.name}'"
    kind = task.kind
    records = evaluation_records(task.source, where, eval_fraction, task.holdout)
    read = read_records(task, records, where, seed=seed, limit=scaled(task.limit, scale))
    if task.max_prompt_tokens is not None:
        max_prompt_tokens = task.max_prompt_tokens
    items, counts = [], {"evaluation_records": len(records), "prompts_truncated": 0}
    if kind == "multiple_choice":
        counts["dropped_label_not_in_choices"] = len(read.dropped)
        counts["skipped_labels"] = read.skipped
    else:
        counts["dropped_empty_target"] = len(read.dropped)
    for record, item in read.usable:
        prompt, truncated = fit_prompt(task.template, record, tokenizer, max_prompt_tokens, where)
        counts["prompts_truncated"] += truncated
        items.append({"id": str(record["id"]), "prompt": prompt, **item})
    if not items:
        raise DataError(f"{where}: no usable evaluation items ({counts})")
    dropped = len(read.dropped)
    if read.too_many_dropped(max_dropped):
        raise DataError(
            f"{where}: {dropped} of {len(items) + dropped} records read were dropped ({counts}); "
            f"at most {max_dropped:.0%} may be (evaluation.max_dropped_fraction)"
        )
    counts["items"] = len(items)
    counts["dropped"] = dropped
    fixed = [str(c) for c in task.choices] if task.choices else None
    return TaskItems(name=task.name, kind=kind, items=items, counts=counts, choices=fixed)


def perplexity_documents(
    text: PerplexityText, where: str, tokenizer, *, eval_fraction: float, max_tokens: int | None
) -> tuple[list[str], str]:
    """The evaluation documents, in source order, just enough of them to fill `max_tokens`, and
    their joined text (documents joined with a blank line, as `evaluation_text` does)."""
    records = evaluation_records(text.source, where, eval_fraction, text.holdout)
    documents, chosen, total = [], [], 0
    for record in records:
        if max_tokens is not None and total >= max_tokens:
            break
        document = render(text.template, record, where)
        documents.append(document)
        chosen.append(record)
        total += n_tokens(tokenizer, document)
    return documents, evaluation_text(chosen, text.template, where)
