"""Domain knowledge probes: a cloze over domain terms, derived from a packaged domain corpus.

Where no labelled set of a domain carries signal for a small model, this asks what a domain
language model must know: which domain term comes next. From each document one passage is cut
just before a domain term (a lower-case word of at least 8 letters found in at least
`MIN_DOCUMENTS` documents of the corpus and in at most `MAX_SHARE` of them); the term is the gold
choice and the distractors are other domain terms of the same corpus that the document does not
contain. Records keep the document's id, so the calibration / evaluation split of the probe is the
corpus's own (a probe item never comes from a calibration document). Everything is a function of
the corpus text: the choices are drawn with a generator seeded by the document id.

Record: {id, context, choices, answer, label}: `context` ends just before the term (at most
`CONTEXT_CHARS` characters, starting at a sentence), `label` is the gold letter.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter

from dpruner.data.labelled import LETTERS

TERM = re.compile(r"(?<![\w-])[a-z][a-z-]{6,}[a-z](?![\w-])")
MIN_DOCUMENTS = 5
MAX_SHARE = 0.05
CHOICES = 4
CONTEXT_CHARS = 400
# Context before the term: at least this many characters, so the passage says something.
MIN_CONTEXT_CHARS = 120
SENTENCE_START = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _seed(document_id: str) -> int:
    return int(hashlib.sha1(str(document_id).encode()).hexdigest()[:12], 16)


def cloze_records(records: list[dict], field: str) -> list[dict]:
    """One cloze item per document of `records` whose `field` holds a domain term far enough in."""
    terms_of = [set(TERM.findall(str(r[field]))) for r in records]
    frequency = Counter(t for terms in terms_of for t in terms)
    most = max(MIN_DOCUMENTS, int(MAX_SHARE * len(records)))
    vocabulary = sorted(t for t, n in frequency.items() if MIN_DOCUMENTS <= n <= most)
    domain = set(vocabulary)
    items = []
    for record, terms in zip(records, terms_of, strict=True):
        text = str(record[field])
        rng = random.Random(_seed(record["id"]))
        found = [
            m for m in TERM.finditer(text) if m.group() in domain and m.start() >= MIN_CONTEXT_CHARS
        ]
        if not found or len(vocabulary) - len(terms & domain) < CHOICES - 1:
            continue
        match = rng.choice(found)
        distractors: list[str] = []
        while len(distractors) < CHOICES - 1:  # rejection: the vocabulary is much larger
            term = vocabulary[rng.randrange(len(vocabulary))]
            if term not in terms and term not in distractors:
                distractors.append(term)
        before = text[max(0, match.start() - CONTEXT_CHARS) : match.start()]
        starts = [m.end() for m in SENTENCE_START.finditer(before)]
        if match.start() > CONTEXT_CHARS and starts:
            before = before[starts[0] :]
        context = " ".join(before.split())
        choices = [match.group(), *distractors]
        rng.shuffle(choices)
        gold = choices.index(match.group())
        items.append(
            {
                "id": record["id"],
                "context": context,
                "choices": choices,
                "answer": match.group(),
                "label": LETTERS[gold],
            }
        )
    return items
