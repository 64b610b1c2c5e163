"""Split records by document id into calibration and evaluation parts (docs/data.md)."""

from __future__ import annotations

import re

from dpruner.errors import DataError

PARTS = ("calibration", "evaluation")
DIGITS = re.compile(r"[0-9]+")


def document_id_order(ids) -> list[str]:
    """Distinct ids sorted; numerically if all are digit strings (PMIDs), as the anchor does."""
    distinct = set(ids)
    if all(DIGITS.fullmatch(i) for i in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def split_records(
    records: list[dict], part: str, eval_fraction: float, where: str = "records"
) -> list[dict]:
    """Records of `part`: the last int(eval_fraction share) of sorted document ids are evaluation.

    The cut is int((1 - eval_fraction) * n) like the anchor's int(0.8 * n). Records keep their
    order within a part; all records with one id (e.g. sentences of one abstract) stay together.
    """
    if part not in PARTS:
        raise DataError(f"{where}: split part must be one of {', '.join(PARTS)}, got {part!r}")
    if not 0 < eval_fraction < 1:
        raise DataError(f"{where}: eval_fraction must be between 0 and 1, got {eval_fraction}")
    missing = sum(1 for record in records if "id" not in record)
    if missing:
        raise DataError(f"{where}: {missing} record(s) have no 'id' field")
    ordered = document_id_order(str(record["id"]) for record in records)
    cut = int((1 - eval_fraction) * len(ordered))
    chosen = set(ordered[:cut] if part == "calibration" else ordered[cut:])
    selected = [record for record in records if str(record["id"]) in chosen]
    if not selected:
        raise DataError(
            f"{where}: the {part} part is empty ({len(ordered)} document ids, "
            f"eval_fraction {eval_fraction})"
        )
    return selected
