"""Rendered texts of a section's `calibration:` entries (docs/methods.md).

Each entry is a dpruner.specs.CalibrationEntry: {source, template, count?}. Only the calibration
part of a source is used, so the texts are disjoint from every evaluation document of that
source.
"""

from __future__ import annotations

import random

from dpruner.data.sources import describe_source, load_records
from dpruner.data.splits import split_records
from dpruner.data.templates import render
from dpruner.errors import DataError
from dpruner.specs import CalibrationEntry

INSTANCE_SEED = 42


def _calibration_part(entry: CalibrationEntry, eval_fraction: float) -> tuple[list[dict], str]:
    where = f"calibration source {describe_source(entry.source)}"
    return split_records(load_records(entry.source), "calibration", eval_fraction, where), where


def _shuffled(records: list[dict], count, seed: int, where: str) -> list[dict]:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DataError(f"{where}: count must be a positive integer, got {count!r}")
    if count > len(records):
        raise DataError(
            f"{where}: count {count} but its calibration part has {len(records)} records"
        )
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def counted(records: list[dict], count, where: str, seed: int = INSTANCE_SEED) -> list[dict]:
    """The records an entry's `count` selects from its calibration part: all of them in record
    order without `count`, else the first `count` after a random.Random(seed) shuffle."""
    return records if count is None else _shuffled(records, count, seed, where)[:count]


def entry_texts(
    entry: CalibrationEntry, eval_fraction: float, seed: int = INSTANCE_SEED
) -> list[str]:
    """Rendered calibration-part records of one entry, as `counted` selects them."""
    records, where = _calibration_part(entry, eval_fraction)
    records = counted(records, entry.count, where, seed)
    return [render(entry.template, record, where) for record in records]


def held_back_texts(
    entry: CalibrationEntry, eval_fraction: float, template: str, seed: int = INSTANCE_SEED
) -> list[str]:
    """Calibration-part records that `count` left out of the instances, rendered with `template`.

    Text for tuning D-Pruner's settings that is neither a fine-tuning instance nor evaluation text.
    """
    records, where = _calibration_part(entry, eval_fraction)
    if entry.count is None:
        raise DataError(f"{where}: without `count` every calibration record is an instance")
    count = entry.count
    return [
        render(template, record, where) for record in _shuffled(records, count, seed, where)[count:]
    ]


def domain_instances(
    entries: list[CalibrationEntry], eval_fraction: float, seed: int = INSTANCE_SEED
) -> list[str]:
    """D-Pruner's fine-tuning instances: every entry's texts, concatenated, shuffled with `seed`."""
    if not entries:
        raise DataError("the calibration list is empty")
    instances = [text for entry in entries for text in entry_texts(entry, eval_fraction, seed)]
    random.Random(seed).shuffle(instances)
    return instances
