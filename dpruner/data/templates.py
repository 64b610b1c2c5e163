"""Render records with `str.format` templates from the config; missing fields are named early."""

from __future__ import annotations

import string
from functools import lru_cache

from dpruner.errors import DataError


@lru_cache(maxsize=256)
def template_fields(template: str) -> tuple[str, ...]:
    """Record fields a template uses, in order of first use (`{a.b}` and `{a[0]}` use `a`)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise DataError(f"invalid template {template!r}: {error}") from None
    fields: list[str] = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        root = name.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise DataError(f"template {template!r} uses a positional field; name a record field")
        if root not in fields:
            fields.append(root)
    return tuple(fields)


def _joined(value):
    if isinstance(value, dict):
        return {key: _joined(v) for key, v in value.items()}
    if isinstance(value, list):
        return " ".join(str(_joined(v)) for v in value)
    return value


def joined_fields(record: dict) -> dict:
    """The record with list values joined by a space, so that a template quotes a list field (a
    hub dataset's passages, PubMedQA's `{context[contexts]}`) as running text, everywhere."""
    return _joined(record)


def render(template: str, record: dict, where: str) -> str:
    """`template` filled from `record` (list fields joined by a space); `where` (task or
    source) is named in errors."""
    record = joined_fields(record)
    try:
        fields = template_fields(template)
    except DataError as error:
        raise DataError(f"{where}: {error}") from None
    missing = [field for field in fields if field not in record]
    if missing:
        raise DataError(
            f"{where}: template field '{missing[0]}' is not in the record; "
            f"available fields: {', '.join(sorted(record))}"
        )
    try:
        return template.format(**record)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{where}: template {template!r} failed on record {record.get('id')!r}: {error}"
        ) from None


def evaluation_text(records: list[dict], template: str, where: str = "evaluation text") -> str:
    """Rendered records joined with a blank line: one stream for perplexity."""
    return "\n\n".join(render(template, record, where) for record in records)
