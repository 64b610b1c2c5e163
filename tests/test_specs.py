"""Typed job specs (dpruner.specs): config -> spec -> the rule's `--spec` parameter -> the step's
parser -> the same spec, for every step and job of a config; schema defaults reach the steps;
the flags a person types build the spec the workflow passes."""

import copy
import inspect
import json
import shlex
from dataclasses import MISSING, asdict, fields

import pytest
from test_workflow import REPO, planned_spec, snakemake, write_config

from dpruner import config as config_module
from dpruner import plan, specs
from dpruner.cli import build_parser
from dpruner.config import domain_config, load_config, schema_default
from dpruner.errors import ConfigError, DprunerError
from dpruner.evaluation.items import task_items
from dpruner.steps import (
    domain_scores,
    evaluate,
    general_importance,
    prepare_data,
    prepare_model,
    prune,
)

CONFIG = REPO / "config" / "config.yaml"


def methods_config() -> dict:
    """The default config with a method of every kind and option family."""
    config = load_config(CONFIG)
    dpruner = config["methods"]["dpruner"]
    config["hessian_dtype"] = "float32"
    # Two calibration draws: the second's sets are `general+1` and `<domain>+1`, drawn with seed 1.
    config["calibration"]["draws"] = 2
    config["methods"] = {
        "magnitude-q3": {"kind": "magnitude", "quantize": {"bits": 3, "symmetric": True}},
        "wanda-owl": {"kind": "wanda", "allocation": "owl", "owl_lambda": 0.05},
        "sparsegpt-mixed": {"kind": "sparsegpt", "calibration": "mixed", "domain_share": 0.25},
        "sparsegpt-cross": {"kind": "sparsegpt", "calibration": "cross", "coefficient": 0.3},
        "ria": {"kind": "ria", "calibration": "domain"},
        "dsnot": {"kind": "dsnot", "initial": "sparsegpt", "skip": []},
        "dpruner": {**dpruner, "seed": 7},
        "dpruner-recmix": {**dpruner, "reconstruct": "mixed", "domain_share": 0.75},
    }
    return config


def rule_jobs(config: dict):
    """(step, spec, the step's other arguments) of every job the workflow plans, each spec built
    as the rule builds it (rules/common.smk): a calibration set's seed is its draw's."""
    for model in config["models"]:
        yield "prepare-model", specs.prepare_model_spec(config, model), ["--out", "o"]
        for domain in plan.eval_domains(config):
            for name in plan.calibration_sets(config, domain):
                spec = specs.prepare_data_spec(config, name, plan.calibration_seed(config, name))
                yield "prepare-data", spec, ["--model", "m", "--out", "o"]
        for variant in plan.variants(config):
            spec = specs.evaluate_spec(config, plan.evaluation_parts(config, variant))
            outs = [arg for domain in spec.domains for arg in ("--domain", domain, "--out", "o")]
            yield "evaluate", spec, ["--model", "m", *outs]
    for job in plan.general_importance_jobs(config):
        seed = plan.calibration_seed(config, job.pop("domain"))
        spec = specs.general_importance_spec(config, **job, seed=seed)
        yield "general-importance", spec, ["--model", "m", "--calibration", "c.pt", "--out", "o"]
    for job in plan.domain_scores_jobs(config):
        spec = specs.domain_scores_spec(config, job["model"], job["method"])
        yield "domain-scores", spec, ["--model", "m", "--instances", "i", "--out", "o"]
    for model in config["models"]:
        for job in plan.pruned_jobs(config):
            seed = plan.calibration_seed(config, job["calib"])
            spec = specs.prune_spec(config, model, **job, seed=seed)
            yield "prune", spec, ["--model", "m", "--out", "o"]


# The report steps that read a spec, and its builder.
REPORT_SPECS = {"aggregate": specs.aggregate_spec, "plot": specs.plot_spec}
STEPS = {
    "prepare-model": prepare_model,
    "prepare-data": prepare_data,
    "general-importance": general_importance,
    "domain-scores": domain_scores,
    "prune": prune,
    "evaluate": evaluate,
}


def read_back(step: str, argv: list[str]):
    """What the step reads from its command line."""
    return STEPS[step].job_spec(build_parser().parse_args([step, *argv]))


def rule_command(spec, others: list[str]) -> list[str]:
    """The step's arguments as the rule's shell line passes them: `--spec {params.spec:q}`."""
    return shlex.split(f"{shlex.join(others)} --spec {shlex.quote(spec.to_json())}")


@pytest.mark.parametrize("make_config", [lambda: load_config(CONFIG), methods_config])
def test_every_job_spec_round_trips_through_its_rule_parameter_and_step(make_config):
    config = make_config()
    seen = set()
    for step, spec, others in rule_jobs(config):
        assert type(spec).from_json(spec.to_json()) == spec
        assert read_back(step, rule_command(spec, others)) == spec
        seen.add(step)
    assert seen == set(STEPS)


def test_the_planned_commands_pass_the_specs_the_builders_make(tmp_path):
    config = methods_config()
    result = snakemake(
        "-n", "-p", "--configfile", write_config(tmp_path / "c.yaml", config), workdir=tmp_path
    )
    planned = {}
    for line in result.stdout.splitlines():
        step = line.split("-m dpruner ", 1)[-1].split(" ")[0]
        if "-m dpruner " in line and (step in STEPS or step in REPORT_SPECS):
            planned.setdefault(step, []).append(planned_spec(line)[0].to_json())
    built = {step: [build(config).to_json()] for step, build in REPORT_SPECS.items()}
    for step, spec, _ in rule_jobs(config):
        built.setdefault(step, []).append(spec.to_json())
    assert {step: sorted(jsons) for step, jsons in planned.items()} == {
        step: sorted(jsons) for step, jsons in built.items()
    }


def test_a_default_changed_in_the_schema_reaches_the_step(monkeypatch):
    schema = copy.deepcopy(config_module._schema())
    schema["$defs"]["ria_alpha"]["default"] = 0.7
    schema["$defs"]["hessian_dtype"]["default"] = "float32"
    monkeypatch.setattr(config_module, "_schema", lambda: schema)
    config = load_config(CONFIG)
    config["methods"] = {"ria": {"kind": "ria"}, "sparsegpt": {"kind": "sparsegpt"}}
    for method in config["methods"]:
        spec = specs.prune_spec(config, "smollm2-135m", method, "general", "0.5", "unstructured", 0)
        step = read_back("prune", rule_command(spec, ["--model", "m", "--out", "o"]))
        assert step == spec
        if method == "ria":
            assert step.options == {"alpha": 0.7}
        else:
            assert step.rows.hessian_dtype == "float32"


def test_the_dataclass_defaults_are_the_schemas():
    assert specs.Loading() == specs.Loading(
        device=schema_default("device"), dtype=schema_default("model_dtype")
    )
    assert specs.Rows().seed == schema_default("seed")
    assert specs.Rows().hessian_dtype == schema_default("hessian_dtype")
    assert specs.PruneSpec(method="wanda", sparsity=0.5).stream_blocks is False
    # A config without a key gets the dataclass's default, not a second one.
    options = {"kind": "dpruner", "lambda": 0.1, "lr": 0.03, "epochs": 1, "batch_size": 1}
    assert specs.fine_tuning(options).seed == specs.FineTuneSettings().seed == 42


def test_the_flags_build_the_spec_the_rule_passes(tmp_path):
    config = methods_config()
    config_file = write_config(tmp_path / "c.yaml", config)
    common = ["--model", "m", "--out", "o"]
    model = "smollm2-135m"

    def rule(builder, *names):
        return builder(config, *names)

    # prune: the method's options, quantizer, calibration rows and loading as flags.
    flags = ["--method", "magnitude", "--sparsity", "0.5", "--quantize-bits"]
    flags += ["3", "--symmetric"]
    expected = rule(specs.prune_spec, model, "magnitude-q3", "none", "0.5", "unstructured", 0)
    assert read_back("prune", [*common, *flags]) == expected
    flags = ["--method", "dsnot", "--sparsity", "0.5", "--pattern", "2:4", "--initial"]
    flags += ["sparsegpt", "--skip", "--nsamples", "16", "--hessian-dtype", "float32"]
    expected = rule(specs.prune_spec, model, "dsnot", "general", "0.5", "2of4", 0)
    assert read_back("prune", [*common, *flags]) == expected
    flags = ["--method", "sparsegpt", "--sparsity", "0.5", "--coefficient", "0.3", "--nsamples"]
    flags += ["16", "--hessian-dtype", "float32"]
    expected = rule(specs.prune_spec, model, "sparsegpt-cross", "medical", "0.5", "unstructured", 0)
    assert read_back("prune", [*common, *flags]) == expected
    # general importance and D-Pruner's fine-tuning.
    flags = ["--sparsity", "0.5", "--nsamples", "16", "--hessian-dtype", "float32"]
    expected = rule(specs.general_importance_spec, model, "0.5", "mean", 0)
    assert read_back("general-importance", [*common, "--calibration", "c", *flags]) == expected
    tuned = config["methods"]["dpruner"]
    flags = ["--lambda", str(tuned["lambda"]), "--epochs", str(tuned["epochs"]), "--max-length"]
    flags += [str(tuned["max_length"]), "--batch-size", str(tuned["batch_size"]), "--seed", "7"]
    flags += ["--no-gradient-checkpointing", "--keep-gradients"]
    expected = rule(specs.domain_scores_spec, model, "dpruner")
    assert read_back("domain-scores", [*common, "--instances", "i", *flags]) == expected
    # The config-reading steps: --config FILE and the job's names.
    by_config = ["--config", str(config_file)]
    expected = rule(specs.prepare_model_spec, model)
    assert read_back("prepare-model", ["--out", "o", *by_config, "--model", model]) == expected
    assert read_back("prepare-model", ["--out", "o", "--packaged", "smollm2"]) == expected
    expected = specs.prepare_data_spec(config, "medical", config["seed"])
    assert read_back("prepare-data", [*common, *by_config, "--domain", "medical"]) == expected
    expected = specs.evaluate_spec(config, plan.evaluation_parts(config, plan.DENSE))
    outs = [arg for domain in plan.eval_domains(config) for arg in ("--domain", domain)]
    assert read_back("evaluate", [*common, *by_config, *outs, "--out", "o", "--out", "o"]) == (
        expected
    )


@pytest.mark.parametrize(
    ("step", "argv", "message"),
    [
        ("prune", ["--spec", "{}", "--sparsity", "0.5"], "not with --sparsity"),
        ("prune", ["--spec", '{"method": "wanda", "sparsity": 0.5}', "--alpha", "1"], "--alpha"),
        ("prune", ["--sparsity", "0.5"], "give --method"),
        ("prune", ["--method", "wanda"], "give --sparsity"),
        ("general-importance", ["--calibration", "c", "--spec", "[1]"], "JSON object"),
        ("domain-scores", ["--instances", "i", "--spec", '{"epochs": 1}'], "unknown key(s)"),
        ("prepare-model", ["--packaged", "smollm2", "--gguf", "f"], "one source"),
        ("prepare-data", [], "--config FILE or --spec"),
    ],
)
def test_a_bad_spec_or_flag_mix_is_one_clear_error(step, argv, message):
    with pytest.raises(
        (ConfigError, DprunerError), match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        read_back(step, ["--model", "m", "--out", "o", *argv])


def test_specs_import_no_torch():
    import subprocess
    import sys

    code = "import sys, dpruner.specs; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_evaluated_parts_are_the_only_ones_a_spec_holds():
    config = load_config(CONFIG)
    variant = plan.pruned_id("dpruner", "medical", "0.5", "unstructured")
    spec = specs.evaluate_spec(config, plan.evaluation_parts(config, variant))
    legal = config["domains"]["legal"]["perplexity"]
    assert spec.domains["legal"] == specs.Domain(
        perplexity=specs.PerplexityText.from_config(legal, "legal.perplexity")
    )
    assert set(spec.domains["medical"].section()) == {"perplexity", "tasks"}


def catalogue_config() -> dict:
    """The default config with every catalogue task in its domain's section (expanded)."""
    config = load_config(CONFIG)
    for domain, tasks in config_module.catalogue_domains().items():
        if domain == "general" or domain in config["domains"]:
            section = domain_config(config, domain)
            section["tasks"] = [{"name": name, **task} for name, task in tasks.items()]
    return config


def test_every_config_entry_round_trips_and_reads_by_attribute():
    config = catalogue_config()
    for domain in plan.eval_domains(config):
        typed = specs.domain_parts(config, domain)
        section = domain_config(config, domain)
        assert specs.from_dict(specs.Domain, typed.section(), domain) == typed
        for task, entry in zip(typed.tasks, section["tasks"], strict=True):
            # Every key the config writes reads back as the attribute of that name.
            assert {key: getattr(task, key) for key in entry} == entry
        assert typed.perplexity.template == section["perplexity"]["template"]
        assert [e.source for e in typed.calibration] == [
            e["source"] for e in section["calibration"]
        ]
    aggregate = specs.aggregate_spec(config)
    assert specs.AggregateSpec.from_json(aggregate.to_json()) == aggregate
    plotted = specs.plot_spec(config)
    assert specs.PlotSpec.from_json(plotted.to_json()) == plotted


def test_an_entry_default_is_written_once_in_the_schema():
    # holdout has no default in the dataclasses: from_config fills the schema's.
    for cls in (specs.Task, specs.PerplexityText):
        holdout = next(f for f in fields(cls) if f.name == "holdout")
        assert holdout.default is MISSING and holdout.metadata["schema"] == "holdout"
    text = {"source": {"corpus": "pubmed"}, "template": "{abstract}"}
    assert specs.PerplexityText.from_config(text, "t").holdout is schema_default("holdout")
    assert specs.Intervals() == specs.Intervals(**schema_default("intervals"))
    config = load_config(CONFIG)
    del config["intervals"]
    assert specs.aggregate_spec(config).intervals == specs.Intervals()
    config["intervals"] = {"level": 0.9}
    assert specs.aggregate_spec(config).intervals == specs.Intervals(level=0.9)


def test_a_task_perplexity_or_intervals_default_changed_in_the_schema_reaches_the_step(
    monkeypatch,
):
    schema = copy.deepcopy(config_module._schema())
    schema["$defs"]["holdout"]["default"] = False
    schema["$defs"]["intervals"]["default"] = {"resamples": 500, "seed": 3, "level": 0.9}
    monkeypatch.setattr(config_module, "_schema", lambda: schema)
    config = load_config(CONFIG)
    del config["intervals"]
    spec = specs.evaluate_spec(config, plan.evaluation_parts(config, plan.DENSE))
    others = ["--model", "m", "--domain", "medical", "--out", "o"]
    step = read_back("evaluate", rule_command(spec, others))
    assert step == spec
    medical = step.domains["medical"]
    assert medical.perplexity.holdout is False
    written = config["domains"]["medical"]["tasks"]
    assert [t.holdout for t in medical.tasks] == [t.get("holdout", False) for t in written]
    aggregate = specs.aggregate_spec(config)
    assert specs.AggregateSpec.from_json(aggregate.to_json()).intervals == specs.Intervals(
        resamples=500, seed=3, level=0.9
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "ranking"}, "task 't': kind must be one of"),
        ({"label_field": None}, "task 't': missing key 'label_field'"),
        ({"choices": None}, "task 't': missing key 'choices' or 'choices_field'"),
        ({"lable_field": "x"}, r"medical.tasks\[0\]: unknown key\(s\) lable_field for Task"),
    ],
)
def test_a_bad_task_is_one_clear_error(changes, message):
    task = {"name": "t", "kind": "multiple_choice", "source": {"corpus": "pubmed"}}
    task |= {"template": "{title}", "choices": ["a", "b"], "label_field": "label"}
    with pytest.raises(ConfigError, match=message):
        specs.Task.from_config({**task, **changes}, "medical.tasks[0]")


COMMITTED = sorted(
    path
    for path in [*REPO.glob("config/*.yaml"), *REPO.glob("config/studies/*.yaml")]
    if path.name != "tasks.yaml"
)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_the_evaluation_settings_round_trip_and_read_what_the_config_writes(path):
    config = load_config(path)
    spec = specs.evaluate_spec(config, plan.evaluation_parts(config, plan.DENSE))
    assert specs.EvaluateSpec.from_json(spec.to_json()).evaluation == spec.evaluation
    settings, written = spec.evaluation, config["evaluation"]
    for key, value in written.items():
        if isinstance(value, dict):
            assert {k: getattr(getattr(settings, key), k) for k in value} == value
        else:
            assert getattr(settings, key) == value
    # Every committed config writes both generation keys that have a default, so merging a
    # `generation` mapping with the default (as now) and replacing it (as before) are the same.
    generation = {k: v for k, v in asdict(settings.generation).items() if v is not None}
    assert generation == written["generation"]


def test_an_evaluation_default_is_written_once_in_the_schema():
    default = schema_default("evaluation")
    assert specs.evaluation({}) == specs.EvaluationSettings()
    built = asdict(specs.EvaluationSettings())
    assert {key: built[key] for key in default} | {
        part: {key: built[part][key] for key in default[part]}
        for part in ("perplexity", "generation")
    } == default
    assert built["dtype"] == schema_default("model_dtype") and built["batch_size"] is None
    # The schema's descriptions name no default of their own.
    evaluation = config_module._schema()["$defs"]["evaluation"]
    described = json.dumps([evaluation["description"], evaluation["properties"]])
    assert not any(str(value) in described for value in (8192, 384, 2048, 0.05))
    # What reads a default reads this one.
    parser = build_parser()
    by_hand = parser.parse_args(["perplexity", "--model", "m", "--data", "d"])
    assert (by_hand.window, by_hand.stride, by_hand.bos) == tuple(
        default["perplexity"][key] for key in ("window", "stride", "bos")
    )
    assert (
        inspect.signature(task_items).parameters["max_dropped"].default
        == (default["max_dropped_fraction"])
    )


def test_an_evaluation_default_changed_in_the_schema_reaches_the_step(monkeypatch):
    schema = copy.deepcopy(config_module._schema())
    default = schema["$defs"]["evaluation"]["default"]
    default["perplexity"]["window"] = 64
    default["generation"]["max_new_tokens"] = 8
    default["max_dropped_fraction"] = 0.2
    monkeypatch.setattr(config_module, "_schema", lambda: schema)
    config = load_config(CONFIG)
    config["evaluation"] = {"perplexity": {"stride": 32}, "generation": {"temperature": 0.5}}
    spec = specs.evaluate_spec(config, plan.evaluation_parts(config, plan.DENSE))
    others = ["--model", "m", "--domain", "medical", "--out", "o"]
    step = read_back("evaluate", rule_command(spec, others))
    assert step == spec
    assert (step.evaluation.perplexity.window, step.evaluation.perplexity.stride) == (64, 32)
    assert step.evaluation.max_dropped_fraction == 0.2
    # `generation` is merged key by key with the default, not replaced (as `perplexity` is).
    assert step.evaluation.generation == specs.GenerationSettings(
        max_new_tokens=8, do_sample=False, temperature=0.5
    )
