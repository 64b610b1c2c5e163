# The DAG's glue: paths as Snakemake templates, wildcard constraints, resources, and the
# functions of a job's wildcards that rules take as input, params and priority. What the DAG is
# (its jobs, their paths and inputs, the pruned-model id) is dpruner/plan.py's.
import os
import re
import shlex
import sys

from dpruner import plan, specs
from dpruner.config import schema_default, unquantized_twins
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
DEVICE = config.get("device", schema_default("device"))
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


def cli_options(options):
    """`--key value` for every option that is not None, keys with "-" for "_", values quoted."""
    return " ".join(
        f"--{key.replace('_', '-')} {shlex.quote(str(value))}"
        for key, value in options.items()
        if value is not None
    )


def section_parts(domain, *parts):
    """Only `parts` of the section of `domain`, or of the domain a calibration set draws from."""
    domain = plan.split_calibration_set(domain)[0]
    return specs.domain_parts(config, domain, parts)


def evaluation_parts(wildcards):
    return plan.evaluation_parts(config, wildcards.variant)


def evaluation_source_files(wildcards):
    """The local data files of every evaluated section part."""
    return sorted(
        local_paths(
            section_parts(domain, *parts) for domain, parts in evaluation_parts(wildcards).items()
        )
    )


def source_files(*parts):
    """Input function: the local data files the {domain} section's `parts` read."""
    return lambda wildcards: local_paths([section_parts(wildcards.domain, *parts)])


def dpruner_processes(wildcards):
    """Processes (one per GPU) of a D-Pruner method's fine-tuning."""
    return METHODS[wildcards.method].get("processes", schema_default("processes"))


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


def prune_files(wildcards):
    """The flags of a prune job's input files other than the model (`--scores`,
    `--calibration`, `--general-calibration`): which it reads depends on its method."""
    inputs = prune_inputs(wildcards)
    return cli_options({key: path for key, path in inputs.items() if key != "model"})


# Each rule passes its job's spec (dpruner.specs) as `--spec JSON` from these functions of the
# wildcards only: Snakemake compares a job's params with the last run's only for those (a param
# function that takes `input` or `output` is "derived" and never compared), so a changed option
# or default reruns exactly the jobs whose spec it changes.


def prepare_model_spec(wildcards):
    return specs.prepare_model_spec(config, wildcards.model).to_json()


def prepare_data_spec(wildcards):
    return specs.prepare_data_spec(
        config, wildcards.domain, plan.calibration_seed(config, wildcards.domain)
    ).to_json()


def general_importance_spec(wildcards):
    return specs.general_importance_spec(
        config,
        wildcards.model,
        wildcards.sparsity,
        wildcards.normalize,
        plan.calibration_seed(config, wildcards.domain),
    ).to_json()


def domain_scores_spec(wildcards):
    return specs.domain_scores_spec(config, wildcards.model, wildcards.method).to_json()


def prune_spec(wildcards):
    return specs.prune_spec(
        config,
        wildcards.model,
        wildcards.method,
        wildcards.calib,
        wildcards.sparsity,
        wildcards.pattern,
        plan.calibration_seed(config, wildcards.calib),
    ).to_json()


def evaluate_spec(wildcards):
    return specs.evaluate_spec(config, evaluation_parts(wildcards)).to_json()


def benchmark_files():
    """The benchmark file of every job that computes something, for the per-rule figures."""
    return [
        *expand(rules.prepare_model.benchmark, model=MODELS),
        *expand(rules.prepare_data.benchmark, model=MODELS, domain=CALIBRATION_SETS),
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
