"""The workflow's plan: the jobs a validated config asks for, where each writes, and the id of a
pruned model, written and read back here only.

Pure functions of the config, without Snakemake: the rules (rules/*.smk) are the DAG that calls
them, and the report reads a metrics file's model back with `parse_pruned_id`. Paths are
templates under the config's `results` folder whose `{fields}` are the rules' wildcards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dpruner.config import kind_properties, schema_default, sparsity_token
from dpruner.errors import DprunerError


@dataclass(frozen=True)
class KindInputs:
    """What the workflow gives the prune jobs of one method kind."""

    calibration: bool  # calibration rows, the inputs each block is pruned on
    hessians: bool  # builds Hessians X^T X, so it takes the config's `hessian_dtype`
    scores: bool  # masks by D-Pruner's scores: general importance, then fine-tuning per domain


def kind_inputs(kind: str) -> KindInputs:
    """What the prune jobs of `kind` read, as its Pruner class declares (dpruner/methods): the
    one place the DAG tells kinds apart. Imported on first use, so that importing the plan stays
    cheap. Options add to it (`calibrates`, `uses_hessians`): `reconstruct` repairs the kept
    weights with SparseGPT's sweep, so it brings calibration rows and Hessians; `allocation: owl`
    measures outliers on calibration rows; DSnoT's `initial: sparsegpt` starts from SparseGPT's
    saliency, which needs Hessians."""
    from dpruner.methods import PRUNERS

    pruner = PRUNERS[kind]
    return KindInputs(pruner.needs_calibration, pruner.builds_hessians, pruner.masks_by_scores)


def kind_options(kind: str) -> dict[str, str]:
    """A kind's own options, each with the schema's `$defs` entry that holds its default: the
    keys of its schema entry that refer to `$defs.<kind>_<key>`. They are the flags of the same
    names that `python -m dpruner prune` takes for that kind only (`method_options`)."""
    return {
        key: f"{kind}_{key}"
        for key, entry in kind_properties(kind).items()
        if entry.get("$ref") == f"#/$defs/{kind}_{key}"
    }


# OWL's options, taken by any calibrated kind with `allocation: owl`; `$defs` of the same names.
OWL_OPTIONS = ("owl_m", "owl_lambda")

DENSE = "dense"
GENERAL = "general"
# The calibration of a model pruned without calibration data (magnitude).
NO_CALIBRATION = "none"

# A calibration set: `general` or a domain, drawn with the config's seed (draw 0), or
# `<general or domain>+<d>`, its draw d (`calibration.draws`), drawn with seed + d. Names hold
# no "+" (the schema's `name`), so the set splits back unambiguously.
DRAW_MARK = "+"

DENSE_MODEL = "models/{model}/dense"
# {domain} in DATA and the scores is a calibration set.
DATA = "data/{model}/{domain}"
CALIBRATION = f"{DATA}/calibration.pt"
INSTANCES = f"{DATA}/instances.jsonl"
GENERAL_IMPORTANCE = (
    "scores/{model}/{domain}/general_importance_s{sparsity}_norm-{normalize}.safetensors"
)
DOMAIN_SCORES = "scores/{model}/{domain}/domain_scores_{method}_s{sparsity}.safetensors"
# A pruned model's id. Names hold no "_" (the schema's `name`), so the id splits back
# unambiguously; the calibration is `none` or a calibration set.
PRUNED_ID = "{method}_{calib}_s{sparsity}_{pattern}"
PRUNED_MODEL = f"models/{{model}}/pruned/{PRUNED_ID}"
# prune.json is written last, inside the model directory: its presence means the model is complete.
PRUNE_REPORT = f"{PRUNED_MODEL}/prune.json"
# A variant is `dense` or a pruned model's id.
METRICS = "metrics/{model}/{variant}/{domain}.json"
LOGS = "logs"
BENCHMARKS = "benchmarks"

# The tokens of a sparsity (`sparsity_token`) and of a pattern (`pattern_token`) in paths.
SPARSITY_TOKEN = r"0\.[0-9]+"
PATTERN_TOKEN = r"unstructured|[0-9]+of[0-9]+"
PRUNED_ID_PARTS = re.compile(
    rf"(?P<method>[^_/]+)_(?P<calib>[^_/]+)_s(?P<sparsity>{SPARSITY_TOKEN})"
    rf"_(?P<pattern>{PATTERN_TOKEN})"
)


def under(config: dict, template: str, **fields) -> str:
    """`template` under the results folder: with `fields`, a path (every field filled), else a
    template for a rule."""
    path = f"{config['results']}/{template}"
    return path.format(**fields) if fields else path


def pruned_id(method: str, calib: str, sparsity: str, pattern: str) -> str:
    """The id of a pruned model from its tokens (`pruned_jobs` gives them)."""
    return PRUNED_ID.format(method=method, calib=calib, sparsity=sparsity, pattern=pattern)


def parse_pruned_id(text: str) -> dict[str, str]:
    """`pruned_id`'s tokens back from an id."""
    match = PRUNED_ID_PARTS.fullmatch(text)
    if match is None:
        raise DprunerError(
            f"cannot read the pruned model id '{text}': expected "
            "<method>_<calibration>_s<sparsity>_<pattern>"
        )
    return match.groupdict()


def pattern_token(pattern: str) -> str:
    """`2:4` -> `2of4`: no colon in file names."""
    return pattern.replace(":", "of")


def pattern_of_token(token: str) -> str:
    """`2of4` -> `2:4`; `unstructured` stays."""
    return token.replace("of", ":")


def domains(config: dict) -> list[str]:
    return list(config["domains"])


def draws(config: dict) -> range:
    """The calibration draws of a run: 0 to `calibration.draws` - 1."""
    return range(config["calibration"].get("draws", schema_default("draws")))


def calibration_set(domain: str, draw: int) -> str:
    """The calibration set of `domain` (or `general`) at `draw`: the name alone at draw 0."""
    return domain if draw == 0 else f"{domain}{DRAW_MARK}{draw}"


def split_calibration_set(name: str) -> tuple[str, int]:
    """`calibration_set`'s domain and draw back from its name (`none` is draw 0)."""
    domain, _, draw = name.partition(DRAW_MARK)
    return domain, int(draw) if draw else 0


def calibration_sets(config: dict, domain: str) -> list[str]:
    """Every draw's calibration set of `domain` (or `general`)."""
    return [calibration_set(domain, draw) for draw in draws(config)]


def calibration_seed(config: dict, name: str) -> int:
    """The seed a calibration set is drawn with: the config's seed plus its draw."""
    return config["seed"] + split_calibration_set(name)[1]


def eval_domains(config: dict) -> list[str]:
    """Every model is evaluated on each domain and on general text."""
    return [GENERAL, *domains(config)]


def sparsity_patterns(config: dict) -> list[tuple[str, str]]:
    """(sparsity, pattern token) pairs: unstructured at every sparsity, N:M at N/M."""
    pairs = []
    for pattern in config["patterns"]:
        if pattern == "unstructured":
            pairs += [(sparsity_token(s), "unstructured") for s in config["sparsities"]]
        else:
            n, m = (int(x) for x in pattern.split(":"))
            pairs.append((sparsity_token(n / m), pattern_token(pattern)))
    return list(dict.fromkeys(pairs))


def calibrates(options: dict) -> bool:
    """Whether a method's prune jobs read calibration rows."""
    return (
        kind_inputs(options["kind"]).calibration
        or "reconstruct" in options
        or options.get("allocation") == "owl"
    )


def uses_hessians(options: dict) -> bool:
    """Whether a method's prune jobs build Hessians (and so take `hessian_dtype`)."""
    return (
        kind_inputs(options["kind"]).hessians
        or "reconstruct" in options
        or method_options(options).get("initial") == "sparsegpt"
    )


def mixes_general(options: dict) -> bool:
    """Whether a method calibrates on mixed rows: the domain's with the general set's."""
    return "mixed" in (options.get("calibration"), options.get("reconstruct"))


def reads_general(options: dict) -> bool:
    """Whether a method's per-domain prune jobs also read the general calibration rows: mixed
    into the domain's, or cross-calibrated (the two sets' Hessians combined)."""
    return mixes_general(options) or options.get("calibration") == "cross"


def method_options(options: dict) -> dict:
    """A method's own options as its prune jobs take them (`kind_options`, OWL's with
    `allocation: owl`, cross-calibration's `coefficient`), every default written out from the
    schema: a job's command then changes, and it reruns, when a default does."""
    own = {
        key: options.get(key, schema_default(default))
        for key, default in kind_options(options["kind"]).items()
    }
    if options.get("allocation") == "owl":
        own["allocation"] = "owl"
        own |= {key: options.get(key, schema_default(key)) for key in OWL_OPTIONS}
    if options.get("calibration") == "cross":
        own["coefficient"] = options["coefficient"]
    return own


def calibrations(config: dict, method: str) -> list[str]:
    """Calibration sets a method is pruned with: one shared set, or one per domain."""
    options = config["methods"][method]
    if kind_inputs(options["kind"]).scores:
        # The general-only ablation masks by G alone, once; D-Pruner's S is per domain.
        sets = [GENERAL] if options.get("scores") == GENERAL else domains(config)
    elif options.get("calibration") in ("domain", "mixed", "cross"):
        sets = domains(config)
    elif calibrates(options):
        sets = [GENERAL]
    else:
        return [NO_CALIBRATION]
    return [calibration_set(domain, draw) for draw in draws(config) for domain in sets]


def pruned_jobs(config: dict) -> list[dict[str, str]]:
    """Wildcards (without model) of every pruned model."""
    return [
        {"method": method, "calib": calib, "sparsity": sparsity, "pattern": pattern}
        for method in config["methods"]
        for calib in calibrations(config, method)
        for sparsity, pattern in sparsity_patterns(config)
    ]


def variants(config: dict) -> list[str]:
    """Every evaluated model of one base model: dense, then the pruned ones."""
    return [DENSE, *(pruned_id(**job) for job in pruned_jobs(config))]


def prune_reports(config: dict) -> list[str]:
    return [
        under(config, PRUNE_REPORT, model=model, **job)
        for model in config["models"]
        for job in pruned_jobs(config)
    ]


def metrics_files(config: dict) -> list[str]:
    return [
        under(config, METRICS, model=model, variant=variant, domain=domain)
        for model in config["models"]
        for variant in variants(config)
        for domain in eval_domains(config)
    ]


# What a D-Pruner method's fine-tuning, and so its scores S, depends on (with the sparsity);
# not keep_gradients, which gives the same scores bit for bit.
FINE_TUNING_OPTIONS = (
    "lambda", "lr", "epochs", "batch_size", "max_length", "clip", "normalize",
    "gradient_checkpointing", "seed", "processes",
)  # fmt: skip


def fine_tuned_methods(methods: dict) -> dict:
    """The scored methods that fine-tune per domain (not the general-only ablation)."""
    return {
        name: options
        for name, options in methods.items()
        if kind_inputs(options["kind"]).scores and options.get("scores", "domain") == "domain"
    }


def scores_method(methods: dict, name: str) -> str:
    """The fine-tuned D-Pruner method whose scores `name` masks by: the first one with its
    fine-tuning options, so variants that differ only in how they mask (group, quantize,
    reconstruct) share one fine-tuning."""

    def settings(options: dict) -> dict:
        return {key: options.get(key) for key in FINE_TUNING_OPTIONS}

    own = settings(methods[name])
    return next(
        other for other, options in fine_tuned_methods(methods).items() if settings(options) == own
    )


def _scored(config: dict, fine_tuned_only: bool) -> list[tuple[str, str]]:
    """(method, sparsity) of every scored method and sparsity to prune at; with
    `fine_tuned_only`, each set of fine-tuning settings once (the others reuse its scores)."""
    methods = config["methods"]
    if fine_tuned_only:
        names = [m for m in fine_tuned_methods(methods) if scores_method(methods, m) == m]
    else:
        names = [name for name, options in methods.items() if kind_inputs(options["kind"]).scores]
    sparsities = dict.fromkeys(sparsity for sparsity, _ in sparsity_patterns(config))
    return [(name, sparsity) for name in names for sparsity in sparsities]


def general_importance_jobs(config: dict) -> list[dict[str, str]]:
    """Wildcards of the general-importance files: one per model, general calibration set,
    sparsity and normalisation."""
    keys = dict.fromkeys(
        (sparsity, config["methods"][method]["normalize"])
        for method, sparsity in _scored(config, fine_tuned_only=False)
    )
    return [
        {"model": model, "domain": general, "sparsity": sparsity, "normalize": normalize}
        for model in config["models"]
        for general in calibration_sets(config, GENERAL)
        for sparsity, normalize in keys
    ]


def domain_scores_jobs(config: dict) -> list[dict[str, str]]:
    return [
        {"model": model, "domain": calibration, "method": method, "sparsity": sparsity}
        for model in config["models"]
        for draw in draws(config)
        for calibration in (calibration_set(domain, draw) for domain in domains(config))
        for method, sparsity in _scored(config, fine_tuned_only=True)
    ]


def general_importance_file(
    config: dict, model: str, method: str, sparsity: str, calibration: str
) -> str:
    """The general importance G a scored method is regularised (or, general-only, masked) by,
    for the calibration set `calibration`: from the general set of the same draw."""
    general = calibration_set(GENERAL, split_calibration_set(calibration)[1])
    normalize = config["methods"][method]["normalize"]
    return under(
        config,
        GENERAL_IMPORTANCE,
        model=model,
        domain=general,
        sparsity=sparsity,
        normalize=normalize,
    )


def prune_inputs(config: dict, model: str, method: str, calib: str, sparsity: str) -> dict:
    """The files one prune job reads: the dense model, and its scores and calibration rows."""
    options = config["methods"][method]
    inputs = {"model": under(config, DENSE_MODEL, model=model)}
    domain, draw = split_calibration_set(calib)
    if kind_inputs(options["kind"]).scores and domain == GENERAL:
        inputs["scores"] = general_importance_file(config, model, method, sparsity, calib)
    elif kind_inputs(options["kind"]).scores:
        # D-Pruner's scores are an input only here: baselines never wait for them.
        scores = scores_method(config["methods"], method)
        inputs["scores"] = under(
            config, DOMAIN_SCORES, model=model, domain=calib, method=scores, sparsity=sparsity
        )
    if calibrates(options):
        inputs["calibration"] = under(config, CALIBRATION, model=model, domain=calib)
    if reads_general(options):
        inputs["general_calibration"] = under(
            config, CALIBRATION, model=model, domain=calibration_set(GENERAL, draw)
        )
    return inputs


def calibration_settings(config: dict, domain: str) -> dict:
    """The calibration settings a calibration set's data depends on: with `match_dpruner`, the
    length D-Pruner cuts its instances at, so the domain-calibrated baselines calibrate on
    exactly the tokens D-Pruner fine-tunes on (dpruner.data.tokens.instance_rows). A draw d > 0
    gives its `draw`, which moves the instances' seed (dpruner.data.prepare); not the number of
    draws: a set's data is the same whether other draws are made."""
    settings = {k: v for k, v in config["calibration"].items() if k != "draws"}
    draw = split_calibration_set(domain)[1]
    if draw:
        settings["draw"] = draw
    lengths = {options["max_length"] for options in fine_tuned_methods(config["methods"]).values()}
    if split_calibration_set(domain)[0] != GENERAL and settings.get("match_dpruner") and lengths:
        # The preflight allows one length only.
        settings["instance_length"] = lengths.pop()
    return settings


def specialised_domain(config: dict, variant: str) -> str | None:
    """The domain a model was pruned for (its calibration), None for dense and shared models."""
    if variant == DENSE:
        return None
    domain = split_calibration_set(parse_pruned_id(variant)["calib"])[0]
    return domain if domain in config["domains"] else None


def evaluation_parts(config: dict, variant: str) -> dict[str, tuple[str, ...]]:
    """{domain: the section parts evaluated}: a model pruned for one domain is evaluated on the
    other domains by perplexity only (the cross-domain table), its tasks only on its own domain
    and on general; every other model on everything."""
    own = specialised_domain(config, variant)
    every = ("perplexity", "tasks")
    return {
        domain: every if own is None or domain in (GENERAL, own) else ("perplexity",)
        for domain in eval_domains(config)
    }


def evaluation_priority(config: dict, variant: str) -> float:
    """Between 0 and 1, higher for a model whose tasks run on more domains (a longer job)."""
    parts = evaluation_parts(config, variant).values()
    return sum("tasks" in domain_parts for domain_parts in parts) / len(parts)


def evaluated_model(config: dict, model: str, variant: str) -> str:
    """What an evaluation waits for: the dense model's folder, or a pruned model's prune.json."""
    if variant == DENSE:
        return under(config, DENSE_MODEL, model=model)
    return under(config, PRUNE_REPORT, model=model, **parse_pruned_id(variant))
