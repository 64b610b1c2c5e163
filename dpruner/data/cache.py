"""On-disk cache of parsed packaged corpora, so the slow XML / YAML parsing runs once per version.

Files live under `$DPRUNER_CACHE` (default `~/.cache/dpruner`) as one JSON object per line, named
after the corpus, the package version it was parsed from and `PARSER_VERSION`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from dpruner.io import atomic_output

# Bump when a parser's output changes, so stale cache files are not reused.
PARSER_VERSION = 1


def cache_dir() -> Path:
    return Path(os.environ.get("DPRUNER_CACHE") or Path.home() / ".cache" / "dpruner")


def cache_path(corpus: str, package: str, version: str) -> Path:
    return cache_dir() / f"{corpus}-{package}-{version}-p{PARSER_VERSION}.jsonl"


def cached_rows(path: Path, build: Callable[[], list[dict]]) -> list[dict]:
    """Rows read from `path`, or built by `build()` and written there atomically first."""
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    rows = build()
    try:
        with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    except OSError as error:
        # A read-only or full cache folder only costs speed; the parsed rows are still correct.
        warnings.warn(f"could not write the corpus cache {path}: {error}", stacklevel=2)
    return rows
