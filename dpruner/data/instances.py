"""Rendered texts of a section's `calibration:` entries (algorithms.md 5.4).

Each entry is {source, template, count?}. Only the calibration part of a source is used, so the
texts are disjoint from every evaluation document of that source.
"""

from __future__ import annotations

import random

from dpruner.data.sources import describe_source, load_records
from dpruner.data.splits import split_records
from dpruner.data.templates import render
from dpruner.errors import DataError

INSTANCE_SEED = 42


def entry_texts(entry: dict, eval_fraction: float, seed: int = INSTANCE_SEED) -> list[str]:
    """Rendered calibration-part records of one entry.

    Without `count`, all of them in record order; with `count`, the first `count` after a
    random.Random(seed) shuffle.
    """
    if not isinstance(entry, dict) or "source" not in entry or "template" not in entry:
        raise DataError(f"calibration entry {entry!r} needs the keys source and template")
    where = f"calibration source {describe_source(entry['source'])}"
    records = split_records(load_records(entry["source"]), "calibration", eval_fraction, where)
    texts = [render(entry["template"], record, where) for record in records]
    count = entry.get("count")
    if count is None:
        return texts
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DataError(f"{where}: count must be a positive integer, got {count!r}")
    if count > len(texts):
        raise DataError(f"{where}: count {count} but its calibration part has {len(texts)} records")
    random.Random(seed).shuffle(texts)
    return texts[:count]


def domain_instances(
    entries: list[dict], eval_fraction: float, seed: int = INSTANCE_SEED
) -> list[str]:
    """D-Pruner's fine-tuning instances: every entry's texts, concatenated, shuffled with `seed`."""
    if not entries:
        raise DataError("the calibration list is empty")
    instances = [text for entry in entries for text in entry_texts(entry, eval_fraction, seed)]
    random.Random(seed).shuffle(instances)
    return instances
