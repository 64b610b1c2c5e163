# The DAG's glue: paths as Snakemake templates, wildcard constraints, resources, and the
# functions of a job's wildcards that rules take as input, params and priority. What the DAG is
# (its jobs, their paths and inputs, the pruned-model id) is dpruner/plan.py's.
import json
import os
import re
import shlex
import sys

from dpruner import plan
from dpruner.config import (
    baseline_methods,
    calibration_size_series,
    schema_default,
    unquantized_twins,
)
from dpruner.lifecycle import WORKFLOW_PID_ENV
from dpruner.preflight import local_paths

# Rules run `python -m dpruner ...`: make `python` the interpreter running Snakemake (the project's
# venv) even when the venv is not activated, as in `make run`. A conda env (--sdm conda) still
# comes first, since its activation prepends its own bin folder. Each step watches this process
# and stops, writing nothing, if it is gone (dpruner/lifecycle.py): no orphan outlives a kill -9.
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    **{WORKFLOW_PID_ENV: str(os.getpid())},
)

RESULTS = config["results"]
DOMAINS = plan.domains(config)
EVAL_DOMAINS = plan.eval_domains(config)
MODELS = list(config["models"])
METHODS = config["methods"]
DEVICE = config.get("device", "cpu")
# On a CPU, model jobs run side by side with one thread each: two evaluations of SmolLM2-135M took
# 205 s against 286 s one after the other with two threads each (same metrics). On a GPU they
# queue for the one device (the `gpu` resource, profiles/default) and keep two host threads.
ON_CPU = DEVICE == "cpu"
MODEL_JOB_THREADS = 1 if ON_CPU else 2
GPU_SLOTS = 0 if ON_CPU else 1
# Snakemake starts ready jobs of higher priority first (default 0). Evaluations would otherwise
# fill the cores while the data, general importance and fine-tuning that every D-Pruner model
# waits for queue (seen in a default run: general importance started 17 minutes in).
CRITICAL_PATH = 10
# Then pruning before evaluating, and the longest evaluations first (plan.evaluation_priority), so
# the run ends on evaluations two at a time: in the timed default run at 9b16bdb the last
# evaluation ran alone for 5 minutes, started behind a domain-calibrated pruning.
PRUNING = 2

LOGS = plan.under(config, plan.LOGS)
BENCHMARKS = plan.under(config, plan.BENCHMARKS)
DENSE_MODEL = plan.under(config, plan.DENSE_MODEL)
DATA = plan.under(config, plan.DATA)
CALIBRATION = plan.under(config, plan.CALIBRATION)
INSTANCES = plan.under(config, plan.INSTANCES)
GENERAL_IMPORTANCE = plan.under(config, plan.GENERAL_IMPORTANCE)
DOMAIN_SCORES = plan.under(config, plan.DOMAIN_SCORES)
PRUNED_ID = plan.PRUNED_ID
PRUNE_REPORT = plan.under(config, plan.PRUNE_REPORT)
METRICS = plan.under(config, plan.METRICS)


# Every calibration draw of general text and of each domain (`calibration.draws`).
CALIBRATION_SETS = [name for domain in EVAL_DOMAINS for name in plan.calibration_sets(config, domain)]


def one_of(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    model=one_of(MODELS),
    method=one_of(METHODS),
    calib=one_of([plan.NO_CALIBRATION, *CALIBRATION_SETS]),
    # An evaluated domain (metrics) or a calibration set (data, scores).
    domain=one_of(CALIBRATION_SETS),
    sparsity=plan.SPARSITY_TOKEN,
    pattern=plan.PATTERN_TOKEN,
    normalize="mean|none",
    variant=r"[^/]+",


VARIANTS = plan.variants(config)
ALL_METRICS = plan.metrics_files(config)


def model_dtype(wildcards):
    return config["models"][wildcards.model].get("dtype", "float32")


def model_source(model):
    """A model's entry without `stream_blocks`, which says how later steps read the model, not
    what it is: switching it does not rebuild the dense model."""
    return {key: value for key, value in config["models"][model].items() if key != "stream_blocks"}


def stream_option(wildcards):
    """`--stream-blocks` for a model with `stream_blocks: true` (docs/streaming.md)."""
    return "--stream-blocks" if config["models"][wildcards.model].get("stream_blocks") else ""


def cli_options(options):
    """`--key value` for every option that is not None, keys with "-" for "_", values quoted; a
    boolean as `--key` or `--no-key`, a list as `--key item...` (`--key` alone when empty)."""

    def option(key, value):
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            return f"--{flag}" if value else f"--no-{flag}"
        if isinstance(value, list):
            return " ".join([f"--{flag}", *map(shlex.quote, map(str, value))])
        return f"--{flag} {shlex.quote(str(value))}"

    return " ".join(option(key, value) for key, value in options.items() if value is not None)


def domain_section(domain):
    """The config section of `domain` (or of a draw of it): `general` or one entry of
    `domains`."""
    domain = plan.split_calibration_set(domain)[0]
    if domain == "general":
        return config["general"]
    return config["domains"][domain]


def section_parts(domain, *parts):
    """Only `parts` of the section of `domain`."""
    section = domain_section(domain)
    return {part: section[part] for part in parts if part in section}


def config_json(wildcards=None, section=(), **top):
    """The slice of the config a step reads, as the JSON text of its --config-json: the keys
    `top` and, from the {domain} section, the parts `section`. A rule's params hold it, so a
    change reruns exactly the jobs that read it, and no step reads a file outside its inputs."""
    sliced = dict(top)
    if section:
        parts = section_parts(wildcards.domain, *section)
        domain = plan.split_calibration_set(wildcards.domain)[0]
        if domain == "general":
            sliced["general"] = parts
        else:
            sliced["domains"] = {domain: parts}
    return json.dumps(sliced, sort_keys=True)


def evaluation_parts(wildcards):
    return plan.evaluation_parts(config, wildcards.variant)


def evaluation_source_files(wildcards):
    """The local data files of every evaluated section part."""
    return sorted(
        {
            path
            for domain, parts in evaluation_parts(wildcards).items()
            for path in local_paths(section_parts(domain, *parts))
        }
    )


def evaluation_config_json(wildcards):
    """The config slice of an evaluation: the evaluated parts of every domain, the settings."""
    sections = {
        domain: section_parts(domain, *parts)
        for domain, parts in evaluation_parts(wildcards).items()
    }
    general = sections.pop("general")
    return config_json(
        general=general,
        domains=sections,
        evaluation=config.get("evaluation"),
        calibration={"eval_fraction": config["calibration"]["eval_fraction"]},
        seed=config["seed"],
    )


def source_files(*parts):
    """Input function: the local data files the {domain} section's `parts` read."""
    return lambda wildcards: local_paths(section_parts(wildcards.domain, *parts))


def domain_scores_options(wildcards):
    options = METHODS[wildcards.method]
    keys = ["lambda", "lr", "epochs", "batch_size", "max_length", "clip"]
    checkpointing = "on" if options.get("gradient_checkpointing", True) else "off"
    keep_gradients = "on" if options.get("keep_gradients", False) else "off"
    # Seed 42 for the order of the fine-tuning data, as in the reference (docs/methods.md).
    return cli_options(
        {
            **{key: options[key] for key in keys},
            "gradient_checkpointing": checkpointing,
            "keep_gradients": keep_gradients,
            "seed": options.get("seed", 42),
        }
    )


def dpruner_processes(wildcards):
    """Processes (one per GPU) of a D-Pruner method's fine-tuning."""
    return METHODS[wildcards.method].get("processes", 1)


def dpruner_gpus(wildcards):
    """GPUs a D-Pruner fine-tuning holds: one per process; none on a CPU."""
    return GPU_SLOTS * dpruner_processes(wildcards)


def domain_scores_launcher(wildcards):
    """`python -m dpruner` for one process; torchrun on one node for several (FSDP2 shards)."""
    processes = dpruner_processes(wildcards)
    if processes == 1:
        return "python -m dpruner"
    return f"torchrun --standalone --nproc-per-node {processes} -m dpruner"


def prune_inputs(wildcards):
    return plan.prune_inputs(
        config, wildcards.model, wildcards.method, wildcards.calib, wildcards.sparsity
    )


def prune_options(wildcards):
    """Every option of a prune job, its input files included. A function of the wildcards only:
    Snakemake compares a job's params with the last run's only for those (a param function that
    takes `input` or `output` is "derived" and never compared), so a changed option reruns it."""
    options = METHODS[wildcards.method]
    inputs = prune_inputs(wildcards)
    calibrated = "calibration" in inputs
    quantize = options.get("quantize", {})
    flags = " --symmetric" if quantize.get("symmetric") else ""
    flags += " --reconstruct" if "reconstruct" in options else ""
    mixed = plan.mixes_general(options)
    if stream_option(wildcards):
        flags += f" {stream_option(wildcards)}"
    return (
        cli_options(
            {
                "method": options["kind"],
                "sparsity": wildcards.sparsity,
                "pattern": (
                    None
                    if wildcards.pattern == "unstructured"
                    else plan.pattern_of_token(wildcards.pattern)
                ),
                "group": options.get("group"),
                "scores": inputs.get("scores"),
                "calibration": inputs.get("calibration"),
                "general_calibration": inputs.get("general_calibration"),
                "domain_share": (
                    options.get("domain_share", schema_default("domain_share")) if mixed else None
                ),
                "nsamples": config["calibration"]["nsamples"] if calibrated else None,
                "seqlen": config["calibration"]["seqlen"] if calibrated else None,
                "seed": plan.calibration_seed(config, wildcards.calib) if calibrated else None,
                "quantize_bits": quantize.get("bits"),
                "group_size": quantize.get("group_size"),
                "hessian_dtype": (
                    config.get("hessian_dtype") if plan.uses_hessians(options) else None
                ),
                "device": DEVICE,
                "dtype": model_dtype(wildcards),
                **plan.method_options(options),
            }
        )
        + flags
    )


def benchmark_files():
    """The benchmark file of every job that computes something, for the per-rule figures."""
    return [
        *expand(rules.prepare_model.benchmark, model=MODELS),
        *expand(rules.prepare_data.benchmark, model=MODELS, domain=EVAL_DOMAINS),
        *[
            rules.general_importance.benchmark.format(**job)
            for job in plan.general_importance_jobs(config)
        ],
        *[rules.domain_scores.benchmark.format(**job) for job in plan.domain_scores_jobs(config)],
        *[
            rules.prune.benchmark.format(model=model, **job)
            for model in MODELS
            for job in plan.pruned_jobs(config)
        ],
        *expand(rules.evaluate.benchmark, model=MODELS, variant=VARIANTS),
    ]
