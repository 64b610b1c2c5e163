"""`load_records(source)`: the one entry point from a config `source` to a list of records.

A record is a flat dict of fields plus `id`, the *document* id used for splitting. Sources:
`{corpus: NAME, ...options}` (packaged, see corpora.py), `{path: FILE, id_field?}` (.jsonl; .json
holding a list, `{"data": [...]}` or objects keyed by id; .txt) and
`{hub: ID, name?, split?, data_files?, id_field?}` (Hugging Face datasets, needs internet or a
local datasets cache).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dpruner.data.corpora import packaged_corpus
from dpruner.data.text_files import read_utf8
from dpruner.errors import DataError

PATH_OPTIONS = {"path", "id_field"}
HUB_OPTIONS = {"hub", "name", "split", "data_files", "id_field"}
# Documents in a .txt file are separated by one or more blank lines.
BLANK_LINES = re.compile(r"\n[ \t]*\n")


def describe_source(source: dict) -> str:
    """A short name for messages: `corpus:licences (categories=[...])`, `path:FILE`, `hub:ID`."""
    for kind in ("corpus", "path", "hub"):
        if kind in source:
            options = ", ".join(f"{k}={v!r}" for k, v in source.items() if k != kind)
            return f"{kind}:{source[kind]}" + (f" ({options})" if options else "")
    return repr(source)


def load_records(source: dict) -> list[dict]:
    """Records of `source`; raises DataError for a bad source, a missing file or no records."""
    if not isinstance(source, dict):
        raise DataError(f"a data source must be a mapping, got {source!r}")
    kinds = [kind for kind in ("corpus", "path", "hub") if kind in source]
    if len(kinds) != 1:
        raise DataError(
            f"data source {source!r} must have exactly one of the keys corpus, path or hub"
        )
    if "corpus" in source:
        options = {k: v for k, v in source.items() if k != "corpus"}
        records = packaged_corpus(source["corpus"], options)
    elif "path" in source:
        _check_options(source, PATH_OPTIONS)
        records = _file_records(Path(source["path"]), source.get("id_field", "id"))
    else:
        _check_options(source, HUB_OPTIONS)
        records = _hub_records(source)
    if not records:
        raise DataError(f"data source {describe_source(source)} has no records")
    return records


def _check_options(source: dict, allowed: set[str]) -> None:
    unknown = set(source) - allowed
    if unknown:
        raise DataError(
            f"data source {describe_source(source)}: unknown option(s) "
            f"{', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )


def _file_records(path: Path, id_field: str) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    text = read_utf8(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append(_json_value(line, f"{path}:{number}"))
    elif suffix == ".json":
        rows = _json_value(text, str(path))
        if isinstance(rows, dict) and "data" in rows:
            rows = rows["data"]
        elif isinstance(rows, dict) and rows and all(isinstance(v, dict) for v in rows.values()):
            # Keyed by id (PubMedQA's release: {"12345": {...}}): the key becomes the id.
            rows = [{**value, "id": key} for key, value in rows.items()]
            id_field = "id"
        if not isinstance(rows, list):
            raise DataError(
                f'{path}: expected a list of objects, {{"data": [...]}} or objects keyed by id'
            )
    elif suffix == ".txt":
        rows = [{"text": doc.strip()} for doc in BLANK_LINES.split(text) if doc.strip()]
    else:
        raise DataError(f"{path}: unsupported data file type '{suffix}'; use .jsonl, .json or .txt")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {index} is {type(row).__name__}, expected an object")
    return with_ids(rows, id_field)


def _json_value(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON: {error}") from None


def with_ids(rows: list[dict], id_field: str = "id") -> list[dict]:
    """Rows with `id` = str(row[id_field]), or the zero-padded row index when the row has none."""
    width = len(str(max(len(rows) - 1, 0)))
    return [
        {**row, "id": str(row[id_field]) if id_field in row else str(index).zfill(width)}
        for index, row in enumerate(rows)
    ]


def _hub_records(source: dict) -> list[dict]:
    # Imported here: `datasets` is slow to import and only hub sources need it.
    from datasets import load_dataset

    try:
        dataset = load_dataset(
            source["hub"],
            source.get("name"),
            split=source.get("split", "train"),
            data_files=source.get("data_files"),
        )
    except Exception as error:  # datasets raises many types; the user needs the source named
        raise DataError(f"data source {describe_source(source)} failed to load: {error}") from error
    return with_ids([dict(row) for row in dataset], source.get("id_field", "id"))
