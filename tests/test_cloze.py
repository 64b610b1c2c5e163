"""The domain knowledge probe: a cloze over domain terms with distractors from the same corpus."""

from dpruner.data import cloze, load_records
from dpruner.data.cloze import CHOICES, cloze_records

FILLER = "The study reports what was found in the patients of this cohort. "


def corpus() -> list[dict]:
    """18 documents: `myocardial`, `infarction`, `cardiomyopathy` and `arrhythmia` in six each,
    `uniquewordax` ... in one each (too rare to be domain terms), `patients` in all (too
    common)."""
    records = []
    for i in range(12):
        term = "myocardial infarction" if i % 2 else f"uniqueword{chr(97 + i)}x cardiomyopathy"
        records.append({"id": f"doc{i:02d}", "text": f"{FILLER * 3}Patients had {term} twice."})
    for i in range(12, 18):
        records.append({"id": f"doc{i:02d}", "text": f"{FILLER * 3}Patients had arrhythmia."})
    return records


def test_each_item_cuts_a_passage_before_a_domain_term_of_its_document(monkeypatch):
    # A domain term is in 5 to 9 of the 18 documents here (the packaged corpora: at most 5 %).
    monkeypatch.setattr(cloze, "MAX_SHARE", 0.5)
    records = corpus()
    items = cloze_records(records, "text")
    texts = {r["id"]: r["text"] for r in records}
    assert items and all(item["id"] in texts for item in items)
    for item in items:
        text = texts[item["id"]]
        assert len(item["choices"]) == CHOICES == len(set(item["choices"]))
        assert item["choices"]["ABCD".index(item["label"])] == item["answer"]
        # The passage is the text up to the term, which comes next.
        assert (item["context"] + " " + item["answer"]) in text
        # Distractors are domain terms the document does not contain.
        for choice in item["choices"]:
            if choice != item["answer"]:
                assert choice not in text
        assert item["answer"] in {"myocardial", "infarction", "cardiomyopathy", "arrhythmia"}
    # Terms in a single document are never a choice; documents without a domain term give none.
    assert not any(c.startswith("uniqueword") for item in items for c in item["choices"])
    # A function of the text only: the same items again, whatever the record order.
    assert cloze_records(records[::-1], "text") == items[::-1]


def test_the_packaged_probes_keep_the_corpus_ids():
    items = load_records({"corpus": "licences_cloze", "categories": ["Commercial"]})
    licences = {r["id"] for r in load_records({"corpus": "licences", "categories": ["Commercial"]})}
    assert items and {item["id"] for item in items} <= licences
    assert set(items[0]) == {"id", "context", "choices", "answer", "label"}
