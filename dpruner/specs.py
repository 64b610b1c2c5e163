"""Typed job specs: what one step computes, as frozen dataclasses built from the validated config
and a job's wildcards, one builder per step.

A rule passes its job's spec as `--spec JSON` (`Spec.to_json`); the step reads it back into the
same dataclass (`Spec.from_json`), or builds it from the flags a person types
(dpruner.steps.flags.add_spec_args, generated from the fields) or from `--config FILE` with the
same builder the rule calls. Files (the model, the inputs, the outputs) stay flags: the spec says
what to compute, not where.

Every default is written once: in the schema (`workflow/schemas/config.schema.yaml`, read with
`schema_default`) or in a field here, never both. A builder writes every value out, so a changed
default changes the job's spec, and Snakemake reruns the jobs it concerns.

Pure: no torch, so the Snakefile imports it cheaply.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass

from dpruner import plan
from dpruner.config import (
    baseline_methods,
    calibration_size_series,
    domain_config,
    schema_default,
)
from dpruner.errors import ConfigError, DprunerError

CLIP_MODES = ("two_pass", "one_pass")
ROUNDING_MODES = ("stochastic", "nearest")
DTYPES = ("float32", "bfloat16", "float16")
# The parts of a domain section (`$defs.domain`).
PARTS = ("calibration", "perplexity", "tasks")


class Spec:
    """JSON of a frozen dataclass and back, exactly: `from_json(to_json(s)) == s`."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--spec is not valid JSON: {error}") from None
        return from_dict(cls, data, "--spec")


def from_dict(cls, data, where: str):
    """`cls` from its `asdict` form; nested dataclasses (a field, or a dict's values) rebuilt."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    if unknown := sorted(set(data) - names):
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    if missing := [f.name for f in fields(cls) if _required(f) and f.name not in data]:
        raise ConfigError(f"{where}: {cls.__name__} needs {', '.join(missing)}")
    return cls(**{k: _typed(hints[k], v, f"{where}.{k}") for k, v in data.items()})


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _typed(hint, value, where: str):
    if value is None:
        return None
    if is_dataclass(hint):
        return from_dict(hint, value, where)
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict and args and is_dataclass(args[1]):
        return {key: from_dict(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if typing.get_origin(hint) is list and args and is_dataclass(args[0]):
        return [from_dict(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(hint, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return _typed(inner[0], value, where) if len(inner) == 1 else value
    return value


def option(default=MISSING, *, flag: str | None = None, help: str = "", choices=None, **kwargs):
    """A spec field with what its flag needs (dpruner.steps.flags.add_spec_args): its name when
    not the field's, its help and choices. `flag=""` gives it no flag."""
    metadata = {"flag": flag, "help": help, "choices": choices}
    return field(default=default, metadata=metadata, **kwargs)


class Entry:
    """A config entry (a calibration source, a perplexity text, a task) as a frozen dataclass.
    A field whose default the schema writes (`schema_field`) has none here: `from_config` fills
    it from the schema when the entry leaves it out."""

    @classmethod
    def from_config(cls, entry: dict, where: str):
        schemed = [f for f in fields(cls) if "schema" in f.metadata]
        defaults = {f.name: schema_default(f.metadata["schema"]) for f in schemed}
        return from_dict(cls, {**defaults, **entry}, where)


def schema_field(name: str):
    """An entry's field whose default is the schema's `$defs.<name>.default`."""
    return field(metadata={"schema": name})


@dataclass(frozen=True)
class CalibrationEntry(Entry):
    """One `calibration:` entry (`$defs.calibration_source`): the texts of a source's calibration
    part, all of them in record order, or `count` of them drawn (dpruner.data.instances)."""

    source: dict
    template: str
    count: int | None = None


@dataclass(frozen=True)
class PerplexityText(Entry):
    """A section's `perplexity:` (`$defs.perplexity_source`): the evaluation text."""

    source: dict
    template: str
    holdout: bool = schema_field("holdout")


TASK_KINDS = ("multiple_choice", "summarization")


@dataclass(frozen=True)
class Task(Entry):
    """One task of a section's `tasks:` (`$defs.task`, after dpruner.config.expand_tasks)."""

    name: str
    kind: str
    source: dict
    template: str
    holdout: bool = schema_field("holdout")
    # The first `limit` usable records (times evaluation.scale); None: every one.
    limit: int | None = None
    # None: the evaluation's `max_prompt_tokens`.
    max_prompt_tokens: int | None = None
    # The catalogue task this one was expanded from, as a record.
    use: str | None = None
    # Multiple choice: fixed `choices`, or each record's `choices_field`; the record's
    # `label_field` names its gold one among `labels` (None: the choices themselves).
    choices: list[str] | None = None
    choices_field: str | list[str] | None = None
    label_field: str | None = None
    labels: list | None = None
    # Label values whose records are left out on purpose (counted).
    skip_labels: list = field(default_factory=list)
    # Summarization: the reference summary's field.
    target_field: str | None = None

    def __post_init__(self):
        where = f"task '{self.name}'"
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"{where}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        key = "label_field" if self.kind == "multiple_choice" else "target_field"
        if not getattr(self, key):
            raise ConfigError(f"{where}: missing key '{key}'")
        if self.kind == "multiple_choice" and not (self.choices or self.choices_field):
            raise ConfigError(f"{where}: missing key 'choices' or 'choices_field'")


@dataclass(frozen=True)
class FineTuneSettings:
    """D-Pruner's steps 2-3 (dpruner.finetune); the defaults are the reference's
    (docs/methods.md) and the only ones: the schema requires a D-Pruner method's first six."""

    lam: float = option(0.1, flag="--lambda", help="weight of the regularisation by G")
    lr: float = 0.03
    epochs: int = 5
    batch_size: int = 8
    max_length: int = 1024
    clip: str = option("two_pass", choices=CLIP_MODES)
    max_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    update_rounding: str = option("stochastic", choices=ROUNDING_MODES)
    gradient_checkpointing: bool = option(
        True, help="false trades memory for about a quarter less compute (small models)"
    )
    # two_pass from one backward pass: the norm pass keeps every regularised gradient (fp32, the
    # size of the model) for the update instead of recomputing them (the reference's way).
    keep_gradients: bool = option(
        False,
        help="two_pass clipping from one backward pass, holding a copy of every gradient "
        "(the same updates at about half the compute; small models)",
    )
    # The order of the fine-tuning instances, as in the reference (docs/methods.md).
    seed: int = 42

    def __post_init__(self):
        if self.clip not in CLIP_MODES:
            raise DprunerError(f"clip must be one of {CLIP_MODES}, got '{self.clip}'")
        if self.update_rounding not in ROUNDING_MODES:
            raise DprunerError(f"update_rounding must be one of {ROUNDING_MODES}")
        if self.lam < 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise DprunerError(
                "need lambda >= 0, lr > 0, epochs >= 1 and batch_size >= 1, got "
                f"{self.lam}, {self.lr}, {self.epochs}, {self.batch_size}"
            )


# The config keys of a D-Pruner method that are FineTuneSettings' fields (`lambda` is `lam`).
FINE_TUNING_KEYS = {
    "lambda": "lam",
    "lr": "lr",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "max_length": "max_length",
    "clip": "clip",
    "gradient_checkpointing": "gradient_checkpointing",
    "keep_gradients": "keep_gradients",
    "seed": "seed",
}


@dataclass(frozen=True)
class Domain:
    """The parts of a domain section (`general` or one of `domains`) a job reads; a part the job
    does not read is None."""

    calibration: list[CalibrationEntry] | None = None
    perplexity: PerplexityText | None = None
    tasks: list[Task] | None = None

    def section(self) -> dict:
        """The parts read, every value written out (defaults filled), as a record."""
        return {part: value for part, value in asdict(self).items() if value is not None}


def domain_of(section: dict, where: str) -> Domain:
    """The typed parts of a config section (or of the part of one a job reads)."""
    calibration, perplexity, tasks = (section.get(part) for part in PARTS)
    return Domain(
        calibration=None
        if calibration is None
        else [
            CalibrationEntry.from_config(entry, f"{where}.calibration[{index}]")
            for index, entry in enumerate(calibration)
        ],
        perplexity=None
        if perplexity is None
        else PerplexityText.from_config(perplexity, f"{where}.perplexity"),
        tasks=None
        if tasks is None
        else [
            Task.from_config(task, f"{where}.tasks[{index}]") for index, task in enumerate(tasks)
        ],
    )


def domain_parts(config: dict, domain: str, parts: tuple[str, ...] = PARTS) -> Domain:
    section = domain_config(config, domain)
    return domain_of({part: section[part] for part in parts if part in section}, domain)


@dataclass(frozen=True)
class PrepareModelSpec(Spec):
    """`prepare-model`: one source (a `models:` entry's, or a GGUF file) and the dtype to store."""

    packaged: str | None = option(None, help="a packaged model: smollm2 or gemma3-270m")
    path: str | None = option(None, help="a local Hugging Face model directory")
    hub: str | None = option(None, help="a Hugging Face hub model id")
    gguf: str | None = option(None, help="a local GGUF file")
    dtype: str = option(schema_default("model_dtype"), choices=DTYPES)

    def __post_init__(self):
        given = [name for name in ("packaged", "path", "hub", "gguf") if getattr(self, name)]
        if len(given) != 1:
            raise DprunerError(
                "prepare-model needs one source: --packaged, --path, --hub or --gguf "
                f"(or --config FILE --model NAME), got {len(given)}"
            )


def prepare_model_spec(config: dict, model: str) -> PrepareModelSpec:
    entry = config["models"].get(model)
    if entry is None:
        raise ConfigError(f"the config has no model '{model}' under models")
    source = {key: entry[key] for key in ("packaged", "path", "hub") if key in entry}
    return PrepareModelSpec(**source, dtype=model_dtype(config, model))


def model_dtype(config: dict, model: str) -> str:
    return config["models"][model].get("dtype", schema_default("model_dtype"))


def stream_blocks(config: dict, model: str) -> bool:
    return config["models"][model].get("stream_blocks", schema_default("stream_blocks"))


@dataclass(frozen=True)
class PrepareDataSpec(Spec):
    """`prepare-data`: one domain's calibration entries and the calibration settings."""

    domain: str
    entries: Domain
    nsamples: int
    seqlen: int
    eval_fraction: float
    seed: int
    # BOS first in every calibration window (`calibration.bos`).
    bos: bool = False
    # The length D-Pruner cuts its instances at, for a data-matched domain
    # (plan.calibration_settings).
    instance_length: int | None = None
    # The calibration draw (`calibration.draws`): D-Pruner's instances are chosen with seed
    # 42 + draw (dpruner.data.prepare).
    draw: int = 0


def prepare_data_spec(config: dict, calibration: str, seed: int) -> PrepareDataSpec:
    """The spec of the calibration set `calibration` (`general`, a domain or a draw of either,
    `plan.calibration_set`), drawn with `seed`."""
    settings = plan.calibration_settings(config, calibration)
    domain = plan.split_calibration_set(calibration)[0]
    keys = ("bos", "instance_length", "draw")
    return PrepareDataSpec(
        domain=domain,
        entries=domain_parts(config, domain, ("calibration",)),
        nsamples=settings["nsamples"],
        seqlen=settings["seqlen"],
        eval_fraction=settings["eval_fraction"],
        seed=seed,
        **{key: settings[key] for key in keys if key in settings},
    )


@dataclass(frozen=True)
class Loading:
    """Where a model step runs and the dtype it loads the model in."""

    device: str = option(schema_default("device"), help="cpu, cuda, cuda:N, mps or auto")
    dtype: str = option(schema_default("model_dtype"), choices=DTYPES)


def loading(config: dict, model: str) -> Loading:
    return Loading(
        device=config.get("device", schema_default("device")), dtype=model_dtype(config, model)
    )


STREAM_HELP = (
    "never load the whole model: bring one decoder block at a time from the safetensors files "
    "and free it (a pruned block is written) when the walk is done with it (docs/streaming.md)"
)


def stream_option():
    return option(schema_default("stream_blocks"), help=STREAM_HELP)


@dataclass(frozen=True)
class Rows:
    """How a calibrated step reads its calibration rows: a token tensor (.pt) is used as it is;
    a text source is cut into `nsamples` windows of `seqlen` tokens drawn with `seed`."""

    nsamples: int = 128
    seqlen: int = 512
    seed: int = schema_default("seed")
    template: str = option("{text}", help="record template for text sources")
    batch_size: int = option(8, help="calibration sequences per forward")
    hessian_dtype: str = option(
        schema_default("hessian_dtype"),
        choices=("auto", "float32"),
        help="auto: on CUDA, X^T X in the bf16/fp16 activations' dtype with fp32 output; "
        "float32: in fp32 everywhere (SparseGPT, general importance, --reconstruct)",
    )


def rows(config: dict, seed: int, hessians: bool) -> Rows:
    """The config's calibration settings and `seed`; its `hessian_dtype` where Hessians are
    built (elsewhere the default, so that the key reruns only the jobs it concerns)."""
    settings = config["calibration"]
    dtype = config.get("hessian_dtype", schema_default("hessian_dtype"))
    return Rows(
        nsamples=settings["nsamples"],
        seqlen=settings["seqlen"],
        seed=seed,
        **({"hessian_dtype": dtype} if hessians else {}),
    )


@dataclass(frozen=True)
class GeneralImportanceSpec(Spec):
    """`general-importance`: D-Pruner's step 1 at one sparsity."""

    sparsity: float
    normalize: str = option("mean", choices=("mean", "none"))
    rows: Rows = Rows()
    loading: Loading = Loading()
    stream_blocks: bool = stream_option()


def general_importance_spec(
    config: dict, model: str, sparsity: str, normalize: str, seed: int
) -> GeneralImportanceSpec:
    return GeneralImportanceSpec(
        sparsity=float(sparsity),
        normalize=normalize,
        rows=rows(config, seed, hessians=True),
        loading=loading(config, model),
        stream_blocks=stream_blocks(config, model),
    )


@dataclass(frozen=True)
class DomainScoresSpec(Spec):
    """`domain-scores`: D-Pruner's steps 2-3 with one method's fine-tuning settings."""

    fine_tuning: FineTuneSettings = FineTuneSettings()
    max_instances: int | None = option(None, help="fine-tune on the first N instances only")
    process_group_timeout: float = option(
        1800, help="seconds a rank waits in a collective under torchrun before giving up"
    )
    loading: Loading = Loading()


def fine_tuning(options: dict) -> FineTuneSettings:
    """A D-Pruner method's fine-tuning settings: its keys, FineTuneSettings' defaults for the
    others."""
    return FineTuneSettings(
        **{name: options[key] for key, name in FINE_TUNING_KEYS.items() if key in options}
    )


def domain_scores_spec(config: dict, model: str, method: str) -> DomainScoresSpec:
    return DomainScoresSpec(
        fine_tuning=fine_tuning(config["methods"][method]), loading=loading(config, model)
    )


@dataclass(frozen=True)
class PruneSpec(Spec):
    """`prune`: one method's options at one sparsity and pattern."""

    method: str = option(help="the method kind")
    sparsity: float
    pattern: str = option("unstructured", help="unstructured, 2:4 or 4:8")
    group: str | None = option(
        None, choices=("matrix", "row", "block"), help="absent: the method's"
    )
    # The kind's own options, OWL's and cross-calibration's (plan.method_options); their flags
    # are generated from the schema (dpruner.steps.prune).
    options: dict = option(flag="", default_factory=dict)
    reconstruct: bool = option(
        False,
        help="dpruner: keep the mask from --scores and repair the kept weights with SparseGPT's "
        "OBS sweep on --calibration",
    )
    domain_share: float | None = option(
        None, help="with --general-calibration: the share of domain rows in the mixed set"
    )
    quantize_bits: int | None = option(
        None,
        help="also quantize the kept weights to this many bits: round-to-nearest for magnitude, "
        "wanda and dpruner, SparseGPT's joint sparse + GPTQ sweep for sparsegpt",
    )
    group_size: int | None = option(
        None, help="input columns per quantization grid (absent: one per row)"
    )
    symmetric: bool = option(False, help="symmetric grids (false: asymmetric)")
    rows: Rows = Rows()
    loading: Loading = Loading()
    stream_blocks: bool = stream_option()


def prune_spec(
    config: dict, model: str, method: str, calib: str, sparsity: str, pattern: str, seed: int
) -> PruneSpec:
    """The spec of a prune job; its calibration settings only where it calibrates, so that
    they rerun only the jobs that read them."""
    options = config["methods"][method]
    quantize = options.get("quantize", {})
    calibrated = "calibration" in plan.prune_inputs(config, model, method, calib, sparsity)
    return PruneSpec(
        method=options["kind"],
        sparsity=float(sparsity),
        pattern=plan.pattern_of_token(pattern),
        group=options.get("group"),
        options=plan.method_options(options),
        reconstruct="reconstruct" in options,
        domain_share=(
            options.get("domain_share", schema_default("domain_share"))
            if plan.mixes_general(options)
            else None
        ),
        quantize_bits=quantize.get("bits"),
        group_size=quantize.get("group_size"),
        symmetric=quantize.get("symmetric", False),
        rows=rows(config, seed, plan.uses_hessians(options)) if calibrated else Rows(),
        loading=loading(config, model),
        stream_blocks=stream_blocks(config, model),
    )


@dataclass(frozen=True)
class PerplexitySettings:
    """`evaluation.perplexity`: the sliding window (dpruner.evaluation.perplexity), the tokens of
    the evaluation text it reads (times `scale`), and the tokens of lm-eval's extra rolling
    perplexity (0: off). The defaults are the schema's `$defs.evaluation`."""

    window: int = schema_default("evaluation")["perplexity"]["window"]
    stride: int = schema_default("evaluation")["perplexity"]["stride"]
    max_tokens: int = schema_default("evaluation")["perplexity"]["max_tokens"]
    bos: str = schema_default("evaluation")["perplexity"]["bos"]
    rolling_max_tokens: int = schema_default("evaluation")["perplexity"]["rolling_max_tokens"]


@dataclass(frozen=True)
class GenerationSettings:
    """`evaluation.generation`: how a summary is generated (dpruner.evaluation.harness). A
    sampling key None is lm-eval's default; `seed` None is the run's seed."""

    max_new_tokens: int = schema_default("evaluation")["generation"]["max_new_tokens"]
    do_sample: bool = schema_default("evaluation")["generation"]["do_sample"]
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class EvaluationSettings:
    """Config `evaluation` (dpruner.evaluation.runner); the defaults are the schema's
    `$defs.evaluation` and, for `dtype`, `model_dtype`'s."""

    perplexity: PerplexitySettings = PerplexitySettings()
    max_prompt_tokens: int = schema_default("evaluation")["max_prompt_tokens"]
    generation: GenerationSettings = GenerationSettings()
    # Multiplies every size limit (dpruner.evaluation.items.scaled).
    scale: float = schema_default("evaluation")["scale"]
    # None: the device's (dpruner.evaluation.sizing), known when the model is loaded.
    batch_size: int | None = None
    dtype: str = schema_default("model_dtype")
    max_dropped_fraction: float = schema_default("evaluation")["max_dropped_fraction"]


def evaluation(config: dict) -> EvaluationSettings:
    """Config `evaluation`, the schema's default for a key it leaves out: `perplexity` and
    `generation` are merged key by key too."""
    default = schema_default("evaluation")
    written = config.get("evaluation") or {}
    merged = {"dtype": schema_default("model_dtype"), **default, **written}
    for part in ("perplexity", "generation"):
        merged[part] = {**default[part], **(written.get(part) or {})}
    return from_dict(EvaluationSettings, merged, "evaluation")


@dataclass(frozen=True)
class EvaluateSpec(Spec):
    """`evaluate`: the evaluated parts of each domain and the evaluation settings."""

    domains: dict[str, Domain]
    eval_fraction: float
    seed: int
    evaluation: EvaluationSettings = EvaluationSettings()
    device: str = schema_default("device")


def evaluate_spec(config: dict, parts: dict[str, tuple[str, ...]]) -> EvaluateSpec:
    """The spec of an evaluation of `parts` ({domain: the parts evaluated},
    plan.evaluation_parts)."""
    return EvaluateSpec(
        domains={domain: domain_parts(config, domain, read) for domain, read in parts.items()},
        evaluation=evaluation(config),
        eval_fraction=config["calibration"]["eval_fraction"],
        seed=config["seed"],
        device=config.get("device", schema_default("device")),
    )


@dataclass(frozen=True)
class Intervals:
    """The report's bootstrap intervals (dpruner.intervals); the defaults are the schema's."""

    resamples: int = schema_default("intervals")["resamples"]
    seed: int = schema_default("intervals")["seed"]
    level: float = schema_default("intervals")["level"]


def intervals(config: dict) -> Intervals:
    """Config `intervals`, the schema's default for a key it leaves out."""
    return Intervals(**{**schema_default("intervals"), **config.get("intervals", {})})


@dataclass(frozen=True)
class AggregateSpec(Spec):
    """`aggregate`: the run's settings the tables' provenance line names and the comparisons
    read (dpruner.report.aggregate)."""

    # Config `models`, `sparsities`, `patterns`, `methods` and `calibration` as written.
    models: dict
    sparsities: list
    patterns: list
    methods: dict
    calibration: dict
    # The methods every model is compared with (dpruner.config.baseline_methods).
    baselines: list[str]
    intervals: Intervals = Intervals()
    device: str = schema_default("device")


def aggregate_spec(config: dict) -> AggregateSpec:
    return AggregateSpec(
        models=config["models"],
        sparsities=config["sparsities"],
        patterns=config["patterns"],
        methods=config["methods"],
        calibration=config["calibration"],
        baselines=baseline_methods(config),
        intervals=intervals(config),
        device=config.get("device", schema_default("device")),
    )


@dataclass(frozen=True)
class PlotSpec(Spec):
    """`plot`: the figures of a metric against the calibration size, one per group of domains
    that differ only in their instance counts ({domain: instances},
    dpruner.config.calibration_size_series)."""

    calibration_series: list[dict[str, int]] = field(default_factory=list)


def plot_spec(config: dict) -> PlotSpec:
    return PlotSpec(calibration_series=calibration_size_series(config))
