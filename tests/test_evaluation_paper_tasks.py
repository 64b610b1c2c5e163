"""config/paper.yaml's data sections load and render on small local fixtures in each hub
dataset's (or local release's) schema."""

from pathlib import Path

import pytest
import yaml
from tiny import tiny_tokenizer

from dpruner.data import load_records, render
from dpruner.evaluation.items import perplexity_documents, task_items
from dpruner.specs import PerplexityText, Task

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "hub"
# paper.yaml source -> fixture file in the same schema
FIXTURE_OF = {
    "allenai/c4": "c4.jsonl",
    "Salesforce/wikitext": "wikitext.jsonl",
    "data/medqa/textbooks/en/InternalMed_Harrison.txt": "harrison.txt",
    "qiaojin/PubMedQA": "pubmedqa.jsonl",
    "data/mednli/mli_train_v1.jsonl": "mednli.jsonl",
    "data/mednli/mli_test_v1.jsonl": "mednli.jsonl",
    "data/hqs/train.jsonl": "hqs.jsonl",
    "data/hqs/hqs_test.jsonl": "hqs.jsonl",
    "json": "multi_legal_pile.jsonl",
    "coastalcph/lex_glue": "lex_glue_case_hold.jsonl",
    "casehold/casehold": "casehold.jsonl",
    "FiscalNote/billsum": "billsum.jsonl",
}
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
SECTIONS = {"general": PAPER["general"], **PAPER["domains"]}
TASKS = [task for section in SECTIONS.values() for task in section["tasks"]]


def local(source: dict) -> dict:
    """The fixture standing in for a hub or local source; the id field is kept."""
    fixture = FIXTURE_OF[source.get("hub") or source["path"]]
    return {
        "path": str(FIXTURES / fixture),
        **({"id_field": source["id_field"]} if "id_field" in source else {}),
    }


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(["a holding of the court"], 300, eos_token="!")


def test_every_paper_domain_is_declared():
    assert set(SECTIONS) == {"general", "medical", "legal"}
    assert {t["name"] for t in TASKS} == {"pubmedqa", "mednli", "hqs", "casehold", "billsum"}


@pytest.mark.parametrize("domain", ["general", "medical", "legal"])
def test_perplexity_corpora_render_from_their_fixtures(domain, tokenizer):
    section = {**SECTIONS[domain]["perplexity"]}
    section["source"] = local(section["source"])
    text = PerplexityText.from_config(section, domain)
    documents, joined = perplexity_documents(
        text, domain, tokenizer, eval_fraction=0.2, max_tokens=None
    )
    assert documents and joined == "\n\n".join(documents)


def test_general_calibration_renders_from_its_fixture():
    entry = SECTIONS["general"]["calibration"][0]
    records = load_records(local(entry["source"]))
    assert render(entry["template"], records[0], "c4").startswith("Beginners BBQ")


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t["name"])
def test_paper_tasks_build_items_from_their_fixtures(task, tokenizer):
    task = Task.from_config({**task, "source": local(task["source"]), "holdout": False}, "test")
    built = task_items(task, tokenizer, eval_fraction=0.2, max_prompt_tokens=None, seed=0)
    assert built.counts["items"] >= 2
    for item in built.items:
        assert "{" not in item["prompt"] and "[" not in item["prompt"]
        if task.kind == "multiple_choice":
            assert 0 <= item["gold"] < len(item["choices"])
        else:
            assert item["target"]


def test_pubmedqa_prompt_quotes_the_abstract_as_running_text(tokenizer):
    task = next(t for t in TASKS if t["name"] == "pubmedqa")
    task = Task.from_config({**task, "source": local(task["source"]), "holdout": False}, "test")
    items = task_items(task, tokenizer, eval_fraction=0.2, max_prompt_tokens=None, seed=0)
    by_id = {item["id"]: item for item in items.items}
    assert "regulated process. The lace plant" in by_id["21645374"]["prompt"]
    assert by_id["21645374"]["choices"][by_id["21645374"]["gold"]] == "yes"


def test_casehold_gold_is_the_labelled_holding(tokenizer):
    task = next(t for t in TASKS if t["name"] == "casehold")
    task = Task.from_config({**task, "source": local(task["source"])}, "test")
    items = task_items(task, tokenizer, eval_fraction=0.2, max_prompt_tokens=None, seed=0)
    golds = {item["id"]: item["choices"][item["gold"]] for item in items.items}
    assert golds == {
        "0": "holding that a firebomb is a destructive device",
        "1": "holding that review is de novo",
    }
