"""Preflight: every data mistake of a config is one message naming the domain, key, file and
value, before any model work; sources and templates behave the same everywhere."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dpruner.config import catalogue_domains, expand_tasks, validate_config
from dpruner.data import load_records, render
from dpruner.errors import ConfigError, DataError
from dpruner.evaluation.items import task_items
from dpruner.plan import evaluation_parts
from dpruner.preflight import (
    check_calibration,
    check_config,
    check_evaluation,
    check_results_folder,
    local_paths,
)
from dpruner.specs import Task, domain_of, evaluate_spec, prepare_data_spec

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "workflow"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def fixture_config(tmp_path: Path) -> dict:
    """A small valid config whose sources are copies of the workflow fixtures under tmp_path."""
    from test_workflow import tiny_config

    for name in ("general", "medical", "legal"):
        (tmp_path / f"{name}.jsonl").write_text((FIXTURES / f"{name}.jsonl").read_text())
    text = json.dumps(tiny_config(tmp_path / "model")).replace(str(FIXTURES), str(tmp_path))
    return json.loads(text)


def problems(config: dict, **options) -> str:
    with pytest.raises(ConfigError) as error:
        check_config(config, source="mine.yaml", **options)
    return str(error.value)


def test_the_fixture_config_and_the_default_config_pass(tmp_path):
    check_config(fixture_config(tmp_path))
    check_config(expand_tasks(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))


def test_every_catalogue_task_passes_the_preflight():
    """config/tasks.yaml: every task, named with `use` in the section of its domain, passes the
    schema and the preflight on the installed packages' data."""
    # The default domains and the third-domain study's finance domain.
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    finance = yaml.safe_load((REPO / "config" / "studies" / "third_domain.yaml").read_text())
    config["domains"]["finance"] = finance["domains"]["finance"]
    for domain, tasks in catalogue_domains().items():
        section = config["general"] if domain == "general" else config["domains"][domain]
        section["tasks"] = [{"use": name} for name in tasks]
    expand_tasks(config)
    validate_config(config)
    check_config(config)
    names = [task["name"] for task in config["domains"]["legal"]["tasks"]]
    assert "mmlu_law" in names and "multilexsum" in names


def test_a_missing_file_names_domain_key_and_file(tmp_path):
    config = fixture_config(tmp_path)
    (tmp_path / "legal.jsonl").unlink()
    message = problems(config)
    assert message.startswith("mine.yaml: preflight found")
    # Named once, where it is first read (the perplexity text and the task read it too).
    assert "found 1 problem(s)" in message and "legal.calibration[0].source" in message
    assert f"data file not found: {tmp_path / 'legal.jsonl'}" in message


def test_an_empty_file_is_named(tmp_path):
    config = fixture_config(tmp_path)
    (tmp_path / "medical.jsonl").write_text("")
    message = problems(config)
    assert "medical.calibration[0].source" in message
    assert f"path:{tmp_path / 'medical.jsonl'}" in message and "has no records" in message


def test_a_template_field_missing_from_the_records_lists_the_fields(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["medical"]["tasks"][0]["template"] = "Abstract: {abstrct}\nSection:"
    message = problems(config)
    assert (
        "medical.tasks[0] 'medical_mc'.template: field 'abstrct' is not in the records" in message
    )
    assert "fields: abstract, id, label, title" in message


def test_labels_that_match_no_choice_are_named_with_the_values_found(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["legal"]["tasks"][0]["choices"] = ["Permissive", "Copyleft", "Commercial"]
    message = problems(config)
    assert "legal.tasks[0] 'legal_mc'.labels" in message
    assert "matches no label" in message and "'permissive'" in message
    assert "evaluation.max_dropped_fraction" in message


def test_skip_labels_leave_records_out_on_purpose(tmp_path):
    config = fixture_config(tmp_path)
    task = config["domains"]["legal"]["tasks"][0]
    task["choices"] = ["permissive", "copyleft"]
    assert "legal_mc" in problems(config)
    task["skip_labels"] = ["commercial"]
    check_config(config)


def test_calibration_beyond_the_text_is_an_error(tmp_path):
    config = fixture_config(tmp_path)
    config["calibration"]["nsamples"] = 5000
    message = problems(config)
    assert (
        "medical.calibration: calibration.nsamples x calibration.seqlen = 160000 tokens" in message
    )
    assert "lower nsamples or add text" in message


def test_a_count_beyond_the_records_is_an_error(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["legal"]["calibration"][0]["count"] = 500
    assert "legal.calibration[0].count: 500 but the calibration part" in problems(config)


def model_of_widths(folder: Path, hidden: int, intermediate: int) -> None:
    """A model folder whose config.json alone gives its linears' input widths."""
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {"hidden_size": hidden, "num_attention_heads": 4, "intermediate_size": intermediate}
        )
    )


def test_an_n_m_pattern_must_divide_every_width(tmp_path):
    config = fixture_config(tmp_path)
    model_of_widths(tmp_path / "model", 64, 96)
    config["patterns"] = ["unstructured", "2:4", "3:5"]
    message = problems(config)
    assert "patterns '3:5': M = 5 does not divide the input width(s) [64, 96]" in message
    assert "'2:4'" not in message
    config["patterns"] = ["4:4"]
    assert "N must be smaller than M" in problems(config)


def test_streamed_models_cannot_be_quantized_yet(tmp_path):
    config = fixture_config(tmp_path)
    model = next(iter(config["models"]))
    config["models"][model]["stream_blocks"] = True
    check_config(config)
    config["methods"]["magnitude-q4"] = {"kind": "magnitude", "quantize": {"bits": 4}}
    assert (
        f"models.{model}.stream_blocks: method(s) magnitude-q4 quantize, which streamed pruning"
        in problems(config)
    )


def test_owl_allocation_under_n_m_or_streaming_is_named(tmp_path):
    config = fixture_config(tmp_path)
    model_of_widths(tmp_path / "model", 64, 96)
    config["methods"]["wanda-owl"] = {"kind": "wanda", "allocation": "owl"}
    check_config(config)
    config["patterns"] = ["unstructured", "2:4"]
    assert (
        "methods.wanda-owl.allocation: wanda-owl: allocation owl gives each layer its own "
        "sparsity, but pattern 2:4 fixes every layer at 2/4; use unstructured" in problems(config)
    )
    config["patterns"] = ["unstructured"]
    name = next(iter(config["models"]))
    config["models"][name]["stream_blocks"] = True
    assert f"models.{name}.stream_blocks: method(s) wanda-owl take allocation owl" in problems(
        config
    )


def test_baselines_must_be_methods_of_the_run(tmp_path):
    config = fixture_config(tmp_path)
    config["baselines"] = [next(iter(config["methods"]))]
    check_config(config)
    config["baselines"].append("sparsegpt-domian")
    assert "baselines: sparsegpt-domian not among the methods" in problems(config)


def test_every_problem_is_reported_at_once(tmp_path):
    config = fixture_config(tmp_path)
    (tmp_path / "legal.jsonl").unlink()
    config["domains"]["medical"]["perplexity"]["template"] = "{abstrakt}"
    message = problems(config)
    assert "legal.calibration[0]" in message and "medical.perplexity.template" in message


@pytest.mark.parametrize("results", [".", "..", "./", "a/.."])
def test_the_results_folder_is_not_the_working_folder(tmp_path, results):
    with pytest.raises(ConfigError, match="working folder or one of its parents"):
        check_results_folder(results, tmp_path)
    check_results_folder("my results;x", tmp_path)


def test_jobs_check_their_own_part_of_a_section(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["medical"]["tasks"][0]["template"] = "{abstrakt}"
    check_calibration(prepare_data_spec(config, "medical", config["seed"]))
    spec = evaluate_spec(config, evaluation_parts(config, "dense"))
    with pytest.raises(ConfigError, match="(?s)domain 'medical'.*abstrakt"):
        check_evaluation(spec, ["medical"])


def test_local_paths_are_the_sections_files(tmp_path):
    config = fixture_config(tmp_path)
    medical = domain_of(config["domains"]["medical"], "medical")
    assert local_paths([medical, medical]) == [str(tmp_path / "medical.jsonl")]
    packaged = {"calibration": [{"source": {"corpus": "pubmed"}, "template": "x"}]}
    assert local_paths([domain_of(packaged, "packaged")]) == []


# ---------------------------------------------------------------- sources and templates


def test_a_json_object_keyed_by_id_gives_one_record_per_key(tmp_path):
    path = tmp_path / "pubmedqa.json"
    path.write_text(json.dumps({"12345": {"question": "q1"}, "678": {"question": "q2"}}))
    records = load_records({"path": str(path)})
    assert records == [{"question": "q1", "id": "12345"}, {"question": "q2", "id": "678"}]


def test_list_fields_render_the_same_in_calibration_and_task_templates():
    record = {"id": "1", "context": {"contexts": ["First.", "Second."]}, "tags": ["a", "b"]}
    assert render("{context[contexts]} | {tags}", record, "test") == "First. Second. | a b"


@pytest.fixture(scope="module")
def tokenizer():
    from tiny import tiny_tokenizer

    text = " ".join(["word", "good", "bad", *(f"t{i}" for i in range(20))])
    return tiny_tokenizer([text] * 10, 120, ["<eos>"], eos_token="<eos>", pad_token="<eos>")


def labelled_task(path: Path, rows: list[dict]) -> dict:
    """The config entry of a multiple-choice task on `rows`."""
    return {
        "name": "t",
        "kind": "multiple_choice",
        "source": {"path": str(write_jsonl(path, rows))},
        "template": "{text}",
        "choices": ["good", "bad"],
        "label_field": "label",
        "holdout": False,
    }


def test_dropped_items_above_the_threshold_are_an_error(tmp_path, tokenizer):
    rows = [{"id": str(i), "text": f"t{i}", "label": "x" if i < 3 else "good"} for i in range(20)]
    task = Task.from_config(labelled_task(tmp_path / "t.jsonl", rows), "t")
    options = {"eval_fraction": 0.2, "max_prompt_tokens": None, "seed": 0}
    with pytest.raises(DataError, match=r"3 of 20 records read were dropped.*at most 5%"):
        task_items(task, tokenizer, **options)
    items = task_items(task, tokenizer, **options, max_dropped=0.2)
    assert items.counts["items"] == 17 and items.counts["dropped"] == 3
    skipped = task_items(replace(task, skip_labels=["x"]), tokenizer, **options)
    assert skipped.counts["skipped_labels"] == 3 and skipped.counts["dropped"] == 0


def test_a_task_can_raise_its_own_prompt_length(tmp_path, tokenizer):

    rows = [{"id": str(i), "text": " ".join(["word"] * 50), "label": "good"} for i in range(3)]
    task = Task.from_config(labelled_task(tmp_path / "t.jsonl", rows), "t")
    options = {"eval_fraction": 0.2, "max_prompt_tokens": 10, "seed": 0}
    assert task_items(task, tokenizer, **options).counts["prompts_truncated"] == 3
    longer = replace(task, max_prompt_tokens=1000)
    assert task_items(longer, tokenizer, **options).counts["prompts_truncated"] == 0


# ---------------------------------------------------------------- paper.yaml on fixtures


def paper_loader(source: dict) -> list[dict]:
    """paper.yaml's sources read from the fixtures in their hub (or local release) schema."""
    from test_evaluation_paper_tasks import local

    return load_records(local(source))


def paper_config() -> dict:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    # The fixtures are small: the sizes are the paper's, the schemas are what is checked here.
    config["calibration"]["nsamples"] = 1
    config["calibration"]["seqlen"] = 8
    config["evaluation"]["perplexity"]["window"] = 8
    for section in [config["general"], *config["domains"].values()]:
        for entry in section["calibration"]:
            entry.pop("count", None)
    return config


def test_paper_tasks_pass_the_preflight_on_fixtures_in_the_hub_schema():
    check_config(paper_config(), load=paper_loader, check_hub=True)


def test_casehold_without_labels_would_drop_every_item():
    config = paper_config()
    casehold = next(t for t in config["domains"]["legal"]["tasks"] if t["name"] == "casehold")
    del casehold["labels"]
    message = problems(copy.deepcopy(config), load=paper_loader, check_hub=True)
    assert "legal.tasks[0] 'casehold'.labels: 2 of 2 evaluation records" in message
    assert "values found: '0' (1), '1' (1)" in message


def test_braces_in_the_results_folder_or_a_data_path_are_named(tmp_path):
    # Snakemake reads `{x}` in a file path as a wildcard and has no escape for it.
    config = fixture_config(tmp_path)
    folder = tmp_path / "{x}"
    folder.mkdir()
    braced = str((tmp_path / "legal.jsonl").rename(folder / "legal.jsonl"))
    config = json.loads(json.dumps(config).replace(str(tmp_path / "legal.jsonl"), braced))
    config["results"] = "out/{x}"
    message = problems(config)
    why = "holds a brace, which Snakemake would read as a wildcard in its file names"
    assert f"results: 'out/{{x}}' {why}; name another folder" in message
    assert f"legal.calibration[0].source.path: '{braced}' {why}; rename" in message
    assert f"legal.tasks[0] 'legal_mc'.source.path: '{braced}' {why}" in message


# ---------------------------------------------------------------- late errors caught at plan time


def rewrite_jsonl(path: Path, change) -> None:
    """Apply `change(index, row)` to every row of a JSONL file."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for index, row in enumerate(rows):
        change(index, row)
    write_jsonl(path, rows)


def test_a_perplexity_window_longer_than_the_text_names_domain_key_and_file(tmp_path):
    config = fixture_config(tmp_path)
    config["evaluation"]["perplexity"].update(window=5000, max_tokens=10000)
    message = problems(config)
    assert "legal.perplexity: evaluation.perplexity.window = 5000 tokens" in message
    assert f"path:{tmp_path / 'legal.jsonl'} has only" in message
    # max_tokens below the window leaves no window on any text.
    config["evaluation"]["perplexity"].update(window=64, max_tokens=32)
    assert "max_tokens x scale keeps 32 tokens" in problems(config)


def test_a_field_missing_only_in_a_later_record_names_the_file_and_record(tmp_path):
    config = fixture_config(tmp_path)
    rewrite_jsonl(tmp_path / "legal.jsonl", lambda i, row: row.pop("label") if i == 23 else 0)
    rewrite_jsonl(tmp_path / "medical.jsonl", lambda i, row: row.pop("abstract") if i == 23 else 0)
    message = problems(config)
    source = f"path:{tmp_path / 'medical.jsonl'}"
    assert (
        f"medical.perplexity.template: field 'abstract' is missing from 1 of 6 records of {source}"
        ", first from record 'm23'; fields: id, label, title" in message
    )
    assert "legal.tasks[0] 'legal_mc'.label_field: field 'label' is missing from 1 of 6" in message
    assert f"of path:{tmp_path / 'legal.jsonl'}, first from record 'l23'" in message


def test_a_format_spec_that_fails_on_the_values_names_the_file_and_record(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["medical"]["tasks"][0]["template"] = "{abstract:d}"
    assert (
        f"medical.tasks[0] 'medical_mc'.template: path:{tmp_path / 'medical.jsonl'}: template "
        "'{abstract:d}' failed on record" in problems(config)
    )


def test_empty_summarization_targets_are_an_error_as_in_evaluate(tmp_path, tokenizer):
    config = fixture_config(tmp_path)
    rewrite_jsonl(tmp_path / "medical.jsonl", lambda i, row: row.update(title=" "))
    assert (
        "medical.tasks[1] 'medical_summary'.target_field: 6 of 6 evaluation records read from "
        f"path:{tmp_path / 'medical.jsonl'} have an empty 'title'" in problems(config)
    )
    task = Task.from_config(config["domains"]["medical"]["tasks"][1], "medical")
    options = {"eval_fraction": 0.25, "max_prompt_tokens": None, "seed": config["seed"]}
    with pytest.raises(DataError, match="no usable evaluation items"):
        task_items(task, tokenizer, **options)


@pytest.mark.parametrize("read_by_evaluate", [True, False])
def test_dropped_labels_are_counted_on_the_records_evaluate_reads(
    tmp_path, tokenizer, read_by_evaluate
):
    """The task reads its records in a seeded order until `limit` are usable: the preflight
    judges the dropped share on those records, not on all of them."""
    import random

    order = list(range(40))
    random.Random(0).shuffle(order)
    # One bad label among the 6 records read (1 of 6 > 5 %), or three among the unread (3 of 40).
    bad = order[:1] if read_by_evaluate else order[-3:]
    rows = [
        {"id": f"{i:02}", "text": f"t{i}", "label": "x" if i in bad else "good"} for i in range(40)
    ]
    task = {**labelled_task(tmp_path / "t.jsonl", rows), "limit": 5}
    config = fixture_config(tmp_path)
    config["domains"]["legal"]["tasks"] = [task]
    options = {"eval_fraction": 0.25, "max_prompt_tokens": None, "seed": config["seed"]}
    if read_by_evaluate:
        assert "1 of 6 evaluation records read" in problems(config)
        with pytest.raises(DataError, match="1 of 6 records read were dropped"):
            task_items(Task.from_config(task, "legal"), tokenizer, **options)
    else:
        check_config(config)
        assert (
            task_items(Task.from_config(task, "legal"), tokenizer, **options).counts["dropped"] == 0
        )


def test_a_name_too_long_for_a_file_name_is_named_by_the_schema(tmp_path):
    config = fixture_config(tmp_path)
    config["domains"]["d" * 240] = config["domains"].pop("legal")
    with pytest.raises(ConfigError, match=r'domains: "d{70}.*is longer than 64 characters'):
        validate_config(config, "mine.yaml")


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    config = fixture_config(tmp_path)
    path = tmp_path / "legal.jsonl"
    path.write_bytes(path.read_bytes().replace(b"Any modified", b"Any modifi\xe9d"))
    assert f"{path}:2: not UTF-8 text (byte 0xe9 at offset" in problems(config)


def test_a_corrupt_model_config_is_named_by_the_n_m_check(tmp_path):
    config = fixture_config(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"hidden_size": 64,')
    config["patterns"] = ["2:4"]
    assert f"models.tiny: {tmp_path / 'model' / 'config.json'}: not a valid JSON" in problems(
        config
    )


def test_a_device_missing_here_is_named_when_jobs_start_here(tmp_path):
    import torch

    from dpruner.preflight import check_device

    check_device("cpu", "device")
    with pytest.raises(ConfigError, match=r"mine.yaml: device: 'cuda:99', but this machine has"):
        check_device("cuda:99", "mine.yaml: device")
    if torch.cuda.is_available():
        pytest.skip("the local run below needs a machine without a GPU")
    from test_workflow import default_config_in, fake_env, snakemake

    config_file = default_config_in(tmp_path / "work", device="cuda")
    result = snakemake(
        "--configfile", config_file, "--cores", "1", workdir=tmp_path / "work",
        env=fake_env(tmp_path), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"error: {config_file}: device: 'cuda', but this machine has 0" in result.stderr
    assert not (tmp_path / "calls.txt").exists()  # no job ran
    # Planning does not need the device (a cluster's submit host may have no GPU).
    snakemake("-n", "--configfile", config_file, workdir=tmp_path / "work")
