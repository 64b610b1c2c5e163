# Job lists, paths and command-line arguments derived from the validated config.
import json
import os
import re
import shlex
import sys

from dpruner.config import (
    baseline_methods,
    calibration_size_series,
    fine_tuned_methods,
    schema_default,
    scores_method,
    sparsity_token,
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
DOMAINS = list(config["domains"])
# Every model is evaluated on each domain and on general text.
EVAL_DOMAINS = ["general", *DOMAINS]
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
# Then pruning before evaluating, and the longest evaluations first (evaluation_priority), so the
# run ends on evaluations two at a time: in the timed default run at 9b16bdb the last evaluation
# ran alone for 5 minutes, started behind a domain-calibrated pruning.
PRUNING = 2

LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

DENSE_MODEL = f"{RESULTS}/models/{{model}}/dense"
DATA = f"{RESULTS}/data/{{model}}/{{domain}}"
GENERAL_IMPORTANCE = (
    f"{RESULTS}/scores/{{model}}/general_importance_s{{sparsity}}_norm-{{normalize}}.safetensors"
)
DOMAIN_SCORES = (
    f"{RESULTS}/scores/{{model}}/{{domain}}/domain_scores_{{method}}_s{{sparsity}}.safetensors"
)
# A pruned model's id: <method>_<calibration>_s<sparsity>_<pattern>. Names cannot contain "_"
# (schema), so the id splits back unambiguously; calibration is `none`, `general` or a domain.
PRUNED_ID = "{method}_{calib}_s{sparsity}_{pattern}"
PRUNED_MODEL = f"{RESULTS}/models/{{model}}/pruned/{PRUNED_ID}"
# prune.json is written last, inside the model directory: its presence means the model is complete.
PRUNE_REPORT = f"{PRUNED_MODEL}/prune.json"
METRICS = f"{RESULTS}/metrics/{{model}}/{{variant}}/{{domain}}.json"


def one_of(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    model=one_of(MODELS),
    method=one_of(METHODS),
    calib=one_of(["none", *EVAL_DOMAINS]),
    domain=one_of(EVAL_DOMAINS),
    sparsity=r"0\.[0-9]+",
    pattern=r"unstructured|[0-9]+of[0-9]+",
    normalize="mean|none",
    variant=r"[^/]+",


def pattern_token(pattern):
    """`2:4` -> `2of4`: no colon in file names."""
    return pattern.replace(":", "of")


def pattern_option(token):
    """The CLI's --pattern value of a path token, or None for unstructured."""
    return None if token == "unstructured" else token.replace("of", ":")


def sparsity_patterns():
    """(sparsity, pattern token) pairs: unstructured at every sparsity, N:M at N/M."""
    pairs = []
    for pattern in config["patterns"]:
        if pattern == "unstructured":
            pairs += [(sparsity_token(s), "unstructured") for s in config["sparsities"]]
        else:
            n, m = (int(x) for x in pattern.split(":"))
            pairs.append((sparsity_token(n / m), pattern_token(pattern)))
    return list(dict.fromkeys(pairs))


def calibrations(method):
    """Calibration sets a method is pruned with: one shared set, or one per domain."""
    options = METHODS[method]
    if options["kind"] == "magnitude":
        return ["none"]
    if options["kind"] == "dpruner" and options.get("scores") == "general":
        return ["general"]
    if options["kind"] == "dpruner" or options.get("calibration") in ("domain", "mixed"):
        return DOMAINS
    return ["general"]


def mixes_general(options):
    """Whether a method calibrates on mixed rows: the domain's with the general set's."""
    return "mixed" in (options.get("calibration"), options.get("reconstruct"))


def pruned_jobs():
    """Wildcards (without model) of every pruned model."""
    return [
        {"method": method, "calib": calib, "sparsity": sparsity, "pattern": pattern}
        for method in METHODS
        for calib in calibrations(method)
        for sparsity, pattern in sparsity_patterns()
    ]


def dpruner_jobs(with_general_only=False):
    """(method, sparsity) of every D-Pruner method and sparsity to prune at (the fine-tuned ones
    only once per set of fine-tuning settings: the others reuse their scores)."""
    return [
        (method, sparsity)
        for method, options in METHODS.items()
        if options["kind"] == "dpruner"
        and (
            with_general_only
            or (method in fine_tuned_methods(METHODS) and scores_method(METHODS, method) == method)
        )
        for sparsity in dict.fromkeys(s for s, _ in sparsity_patterns())
    ]


def general_importance_jobs():
    """Wildcards of the general-importance files: one per model, sparsity and normalisation."""
    keys = dict.fromkeys(
        (sparsity, METHODS[method].get("normalize", "mean"))
        for method, sparsity in dpruner_jobs(with_general_only=True)
    )
    return [
        {"model": model, "sparsity": sparsity, "normalize": normalize}
        for model in MODELS
        for sparsity, normalize in keys
    ]


def domain_scores_jobs():
    return [
        {"model": model, "domain": domain, "method": method, "sparsity": sparsity}
        for model in MODELS
        for domain in DOMAINS
        for method, sparsity in dpruner_jobs()
    ]


VARIANTS = ["dense", *(PRUNED_ID.format(**job) for job in pruned_jobs())]
ALL_METRICS = expand(METRICS, model=MODELS, variant=VARIANTS, domain=EVAL_DOMAINS)


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
    """`--key value` for every option that is not None, keys with "-" for "_", values quoted."""
    return " ".join(
        f"--{key.replace('_', '-')} {shlex.quote(str(value))}"
        for key, value in options.items()
        if value is not None
    )


def domain_section(domain):
    """The config section of `domain`: `general` or one entry of `domains`."""
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
        if wildcards.domain == "general":
            sliced["general"] = parts
        else:
            sliced["domains"] = {wildcards.domain: parts}
    return json.dumps(sliced, sort_keys=True)


def calibration_settings(wildcards):
    """The calibration settings a domain's data depends on: with `match_dpruner`, the length
    D-Pruner cuts its instances at, so the domain-calibrated baselines calibrate on exactly the
    tokens D-Pruner fine-tunes on (dpruner.data.tokens.instance_rows)."""
    settings = dict(config["calibration"])
    lengths = {options["max_length"] for options in fine_tuned_methods(METHODS).values()}
    if wildcards.domain != "general" and settings.get("match_dpruner") and lengths:
        # The preflight allows one length only.
        settings["instance_length"] = lengths.pop()
    return settings


def specialised_domain(variant):
    """The domain a model was pruned for (its calibration), None for dense and shared models."""
    calibration = None if variant == "dense" else variant.split("_")[1]
    return calibration if calibration in DOMAINS else None


def evaluation_parts(wildcards):
    """{domain: the section parts evaluated}: a model pruned for one domain is evaluated on the
    other domains by perplexity only (the cross-domain table), its tasks only on its own domain
    and on general; every other model on everything."""
    own = specialised_domain(wildcards.variant)
    every = ("perplexity", "tasks")
    return {
        domain: every if own is None or domain in ("general", own) else ("perplexity",)
        for domain in EVAL_DOMAINS
    }


def evaluation_priority(wildcards):
    """Between 0 and 1, higher for a model whose tasks run on more domains (a longer job)."""
    parts = evaluation_parts(wildcards).values()
    return sum("tasks" in domain_parts for domain_parts in parts) / len(EVAL_DOMAINS)


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
    kind = METHODS[wildcards.method]["kind"]
    inputs = {"model": DENSE_MODEL.format(model=wildcards.model)}
    if kind == "dpruner" and wildcards.calib == "general":
        # The general-only ablation masks by G itself.
        inputs["scores"] = GENERAL_IMPORTANCE.format(
            model=wildcards.model,
            sparsity=wildcards.sparsity,
            normalize=METHODS[wildcards.method].get("normalize", "mean"),
        )
    elif kind == "dpruner":
        # D-Pruner's scores are an input only here: baselines never wait for them.
        inputs["scores"] = DOMAIN_SCORES.format(
            model=wildcards.model,
            domain=wildcards.calib,
            method=scores_method(METHODS, wildcards.method),
            sparsity=wildcards.sparsity,
        )
    options = METHODS[wildcards.method]
    if kind in ("wanda", "sparsegpt") or "reconstruct" in options:
        inputs["calibration"] = f"{DATA}/calibration.pt".format(
            model=wildcards.model, domain=wildcards.calib
        )
    if mixes_general(options):
        inputs["general_calibration"] = f"{DATA}/calibration.pt".format(
            model=wildcards.model, domain="general"
        )
    return inputs


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
    mixed = mixes_general(options)
    hessians = options["kind"] == "sparsegpt" or "reconstruct" in options
    if stream_option(wildcards):
        flags += f" {stream_option(wildcards)}"
    return (
        cli_options(
            {
                "method": options["kind"],
                "sparsity": wildcards.sparsity,
                "pattern": pattern_option(wildcards.pattern),
                "group": options.get("group"),
                "scores": inputs.get("scores"),
                "calibration": inputs.get("calibration"),
                "general_calibration": inputs.get("general_calibration"),
                "domain_share": (
                    options.get("domain_share", schema_default("domain_share")) if mixed else None
                ),
                "nsamples": config["calibration"]["nsamples"] if calibrated else None,
                "seqlen": config["calibration"]["seqlen"] if calibrated else None,
                "seed": config["seed"] if calibrated else None,
                "quantize_bits": quantize.get("bits"),
                "group_size": quantize.get("group_size"),
                "hessian_dtype": config.get("hessian_dtype") if hessians else None,
                "device": DEVICE,
                "dtype": config["models"][wildcards.model].get("dtype", "float32"),
            }
        )
        + flags
    )


def evaluated_model(wildcards):
    if wildcards.variant == "dense":
        return DENSE_MODEL.format(model=wildcards.model)
    return f"{RESULTS}/models/{wildcards.model}/pruned/{wildcards.variant}/prune.json"


def benchmark_files():
    """The benchmark file of every job that computes something, for the per-rule figures."""
    return [
        *expand(rules.prepare_model.benchmark, model=MODELS),
        *expand(rules.prepare_data.benchmark, model=MODELS, domain=EVAL_DOMAINS),
        *[rules.general_importance.benchmark.format(**job) for job in general_importance_jobs()],
        *[rules.domain_scores.benchmark.format(**job) for job in domain_scores_jobs()],
        *[
            rules.prune.benchmark.format(model=model, **job)
            for model in MODELS
            for job in pruned_jobs()
        ],
        *expand(rules.evaluate.benchmark, model=MODELS, variant=VARIANTS),
    ]
