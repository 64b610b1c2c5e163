"""Preflight: every data source, template, label set, size and N:M pattern of a config, checked
before any model work.

The Snakefile runs `check_config` when it plans a run (`snakemake -n` included), `prepare-data`
and `evaluate` run `check_section` before they read a model, and `python -m dpruner check-config`
runs it on its own. Every problem is one line naming the domain, the key, the file and the value,
and all of them are reported together.

Hub sources are checked only where a `load` function is given that can read them (the jobs, or a
test with fixtures): planning does not download data.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from dpruner.data import (
    describe_source,
    evaluation_text,
    load_records,
    render,
    split_records,
    template_fields,
)
from dpruner.data.instances import counted
from dpruner.errors import ConfigError, DataError, DprunerError
from dpruner.evaluation.items import read_records, scaled
from dpruner.io import results_folder_problem
from dpruner.plan import GENERAL, fine_tuned_methods, pattern_of_token, sparsity_patterns
from dpruner.specs import (
    Domain,
    EvaluateSpec,
    EvaluationSettings,
    PerplexityText,
    PrepareDataSpec,
    Task,
    domain_parts,
    evaluation,
)

Loader = Callable[[dict], list[dict]]


@dataclass(frozen=True)
class Settings:
    """What the checks of a section read beside it: the held-out share of every source, the seed
    of a task's record order, the evaluation settings (their perplexity window, scale and
    max_dropped_fraction) and, where calibration is checked, nsamples x seqlen."""

    eval_fraction: float
    seed: int
    evaluation: EvaluationSettings = EvaluationSettings()
    calibration_tokens: int | None = None


def config_settings(config: dict) -> Settings:
    calibration = config["calibration"]
    return Settings(
        eval_fraction=calibration["eval_fraction"],
        seed=config["seed"],
        evaluation=evaluation(config),
        calibration_tokens=calibration["nsamples"] * calibration["seqlen"],
    )


def local_paths(domains: Iterable[Domain]) -> list[str]:
    """The local files (`source: {path: ...}`) the parts of `domains` read, for the jobs'
    inputs."""
    sources = [source for domain in domains for source in _sources(domain).values()]
    return list(dict.fromkeys(source["path"] for source in sources if "path" in source))


def _sources(domain: Domain) -> dict[str, dict]:
    """{key of the entry: source} of every calibration entry, the perplexity text and every
    task of a section's parts."""
    sources = {
        f"calibration[{index}]": entry.source
        for index, entry in enumerate(domain.calibration or [])
    }
    if domain.perplexity:
        sources["perplexity"] = domain.perplexity.source
    for index, task in enumerate(domain.tasks or []):
        sources[f"tasks[{index}] '{task.name}'"] = task.source
    return sources


class _Checker:
    def __init__(
        self, settings: Settings, load: Loader | None, check_hub: bool, config: dict | None = None
    ):
        # `config`: the whole config, for the checks beyond the sections (check_config).
        self.settings = settings
        self.config = config
        self.load = load or load_records
        self.check_hub = check_hub
        self.problems: list[str] = []
        self._records: dict[str, list[dict] | None] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def records(self, source: dict, where: str) -> list[dict] | None:
        """The source's records, or None (problem recorded) when it cannot be read."""
        if "hub" in source and not self.check_hub:
            return None
        key = json.dumps(source, sort_keys=True)
        if key not in self._records:
            try:
                self._records[key] = self.load(source)
            except DataError as error:
                self.problem(f"{where}.source ({describe_source(source)})", str(error))
                self._records[key] = None
        return self._records[key]

    def fields(self, records: list[dict], template: str, where: str, source: dict) -> bool:
        try:
            used = template_fields(template)
        except DataError as error:
            self.problem(f"{where}.template", str(error))
            return False
        key = f"{where}.template"
        return self.present(records, used, key, source) and self.renders(
            records, template, used, key, source
        )

    def present(self, records: list[dict], names, key: str, source: dict) -> bool:
        """Every record has the fields `names`, not only the first: one lacking a field is named
        (every record of the part, not only those a task's limit reads, so no later change of
        limit or seed can fail)."""
        for name in names:
            lacking = [record for record in records if name not in record]
            if not lacking:
                continue
            if len(lacking) == len(records):
                message = f"field '{name}' is not in the records of {describe_source(source)}"
            else:
                message = (
                    f"field '{name}' is missing from {len(lacking)} of {len(records)} records of "
                    f"{describe_source(source)}, first from record {lacking[0]['id']!r}"
                )
            self.problem(key, f"{message}; fields: {', '.join(sorted(lacking[0]))}")
            return False
        return True

    def renders(self, records: list[dict], template: str, used, key: str, source: dict) -> bool:
        """Every record renders: a format spec (`{abstract:d}`) or an index fails only on the
        values, which the field names alone do not show."""
        for record in records:
            # Only the fields it uses (and the id its errors name): half the time of whole records.
            fields = {name: record[name] for name in (*used, "id")}
            try:
                render(template, fields, describe_source(source))
            except DataError as error:
                self.problem(key, str(error))
                return False
        return True

    def part(self, records, part, where, holdout=True):
        if not holdout:
            return records
        try:
            return split_records(records, part, self.settings.eval_fraction, where)
        except DataError as error:
            self.problem(where, str(error))
            return None

    def calibration(self, name: str, domain: Domain) -> None:
        text_bytes = 0
        checked_all = True
        for index, entry in enumerate(domain.calibration):
            where = f"{name}.calibration[{index}]"
            records = self.records(entry.source, where)
            if records is None:
                checked_all = False
                continue
            records = self.part(records, "calibration", where)
            if not records or not self.fields(records, entry.template, where, entry.source):
                checked_all = False
                continue
            count = entry.count
            if count is not None and count > len(records):
                self.problem(
                    f"{where}.count",
                    f"{count} but the calibration part of {describe_source(entry.source)} "
                    f"has {len(records)} records",
                )
                checked_all = False
                continue
            # The texts prepare-data will render: the same selection, the same template.
            text_bytes += sum(
                len(render(entry.template, record, where).encode())
                for record in counted(records, count, where)
            )
        needed = self.settings.calibration_tokens
        # A token covers at least one byte of text, so fewer bytes than tokens needed means the
        # windows would repeat the same text; the exact count is checked with the tokenizer.
        if checked_all and text_bytes < needed:
            self.problem(
                f"{name}.calibration",
                f"calibration.nsamples x calibration.seqlen = {needed} tokens, but the texts have "
                f"only {text_bytes} bytes (fewer tokens still): lower nsamples or add text",
            )

    def perplexity(self, name: str, text: PerplexityText) -> None:
        where = f"{name}.perplexity"
        records = self.records(text.source, where)
        if records is None:
            return
        records = self.part(records, "evaluation", where, text.holdout)
        if records and self.fields(records, text.template, where, text.source):
            self.perplexity_window(where, records, text)

    def perplexity_window(self, where: str, records: list[dict], text: PerplexityText) -> None:
        """The evaluation text holds one perplexity window. A token covers at least one byte, so
        a text of fewer bytes than the window (or a max_tokens below it) has too few tokens."""
        settings = self.settings.evaluation
        options = settings.perplexity
        # A BOS token (once, or at the start of every window) takes one place of the window.
        needed = options.window - (options.bos != "none")
        max_tokens = scaled(options.max_tokens, settings.scale)
        text_bytes = len(evaluation_text(records, text.template, where).encode())
        if min(text_bytes, max_tokens) < needed:
            self.problem(
                where,
                f"evaluation.perplexity.window = {options.window} tokens (bos: "
                f"{options.bos}), but the evaluation text of {describe_source(text.source)}"
                f" has only {text_bytes} bytes (fewer tokens still) and max_tokens x scale keeps "
                f"{max_tokens} tokens: lower the window or add text",
            )

    def task(self, name: str, index: int, task: Task) -> None:
        where = f"{name}.tasks[{index}] '{task.name}'"
        records = self.records(task.source, where)
        if records is None:
            return
        records = self.part(records, "evaluation", where, task.holdout)
        if not records or not self.fields(records, task.template, where, task.source):
            return
        fields = [task.target_field] if task.kind == "summarization" else _field_names(task)
        for field in fields:
            key = f"{where}.{_field_key(task, field)}"
            if not self.present(records, [field], key, task.source):
                return
        self.dropped(where, task, records)

    def dropped(self, where: str, task: Task, records: list[dict]) -> None:
        """Of the records `evaluate` reads (read_records: the same seeded order and limit),
        at most evaluation.max_dropped_fraction may be dropped, and some must be usable."""
        settings = self.settings.evaluation
        limit = scaled(task.limit, settings.scale)
        try:
            read = read_records(task, records, where, seed=self.settings.seed, limit=limit)
        except (ConfigError, DataError) as error:
            self.problem(where, str(error))
            return
        source = describe_source(task.source)
        allowed = settings.max_dropped_fraction
        read_from = f"{len(read.usable) + len(read.dropped)} evaluation records read from {source}"
        if not read.too_many_dropped(allowed):
            if not read.usable:
                self.problem(
                    where,
                    f"no usable evaluation items among the {len(records)} evaluation records of "
                    f"{source} ({len(read.dropped)} dropped, {read.skipped} in skip_labels)",
                )
            return
        share = f"(allowed at most {allowed:.0%}, evaluation.max_dropped_fraction)"
        if task.kind == "summarization":
            self.problem(
                f"{where}.target_field",
                f"{len(read.dropped)} of {read_from} have an empty '{task.target_field}' {share}",
            )
            return
        values = ", ".join(f"{v!r} ({n})" for v, n in sorted(Counter(read.dropped).items())[:10])
        labels = task.labels or task.choices
        labels = [str(v) for v in labels] if labels else f"the records' {task.choices_field}"
        self.problem(
            f"{where}.labels",
            f"{len(read.dropped)} of {read_from} have a '{task.label_field}' that matches no "
            f"label {share}; labels {labels}; values found: {values}; list values to leave out "
            "on purpose under skip_labels",
        )

    def patterns(self) -> None:
        from dpruner.models import model_widths

        widths_of = {}
        for pattern in self.config.get("patterns", []):
            if pattern == "unstructured":
                continue
            n, m = (int(x) for x in pattern.split(":"))
            if n >= m:
                self.problem("patterns", f"'{pattern}': N must be smaller than M")
                continue
            for model, entry in self.config.get("models", {}).items():
                if model not in widths_of:
                    try:
                        widths_of[model] = model_widths(entry)
                    except DprunerError as error:
                        self.problem(f"models.{model}", str(error))
                        widths_of[model] = {}
                widths = widths_of[model]
                bad = sorted({w for w in widths.values() if w % m})
                if bad:
                    self.problem(
                        f"patterns '{pattern}'",
                        f"M = {m} does not divide the input width(s) {bad} of model '{model}' "
                        f"({', '.join(k for k, w in widths.items() if w % m)})",
                    )

    def matched_calibration(self) -> None:
        """Baselines matched to D-Pruner's tokens need one D-Pruner instance length."""
        if not self.config["calibration"].get("match_dpruner"):
            return
        methods = fine_tuned_methods(self.config["methods"])
        lengths = {name: options["max_length"] for name, options in methods.items()}
        if len(set(lengths.values())) > 1:
            self.problem(
                "calibration.match_dpruner",
                f"the D-Pruner methods cut instances at different lengths {lengths}; "
                "give them one max_length or set match_dpruner: false",
            )

    def baselines(self) -> None:
        """The methods the report compares with must be methods of the run."""
        unknown = [
            name for name in self.config.get("baselines", []) if name not in self.config["methods"]
        ]
        if unknown:
            self.problem(
                "baselines",
                f"{', '.join(unknown)} not among the methods ({', '.join(self.config['methods'])})",
            )

    def quantization(self) -> None:
        """A quantize option the prune step would refuse, named before any job runs: SparseGPT
        quantizes inside its column blocks, and its pruner says which group sizes fit them."""
        for name, options in self.config["methods"].items():
            if options["kind"] != "sparsegpt" or "quantize" not in options:
                continue
            from dpruner.methods import get_pruner
            from dpruner.quantize import QuantSpec

            quantize = options["quantize"]
            try:
                get_pruner(
                    "sparsegpt", quantize=QuantSpec(quantize["bits"], quantize.get("group_size"))
                )
            except DprunerError as error:
                self.problem(f"methods.{name}.quantize", str(error))

    def streaming(self) -> None:
        """`prune --stream-blocks` refuses to quantize or allocate by OWL; say so before any job
        runs."""
        quantized = [
            name for name, options in self.config["methods"].items() if "quantize" in options
        ]
        owl = _owl_methods(self.config)
        for model, entry in self.config["models"].items():
            if entry.get("stream_blocks") and quantized:
                self.problem(
                    f"models.{model}.stream_blocks",
                    f"method(s) {', '.join(quantized)} quantize, which streamed pruning does not "
                    "do yet; set stream_blocks: false for this model or drop their quantize",
                )
            if entry.get("stream_blocks") and owl:
                self.problem(
                    f"models.{model}.stream_blocks",
                    f"method(s) {', '.join(owl)} take allocation owl, which walks the dense model "
                    "before pruning, as streamed pruning does not yet; set stream_blocks: false "
                    "for this model or drop their allocation",
                )

    def allocation(self) -> None:
        """`allocation: owl` with an N:M pattern, which the prune step would refuse
        (OwlAllocation.check_plan), named before any job runs."""
        from dpruner.masks import SparsitySpec
        from dpruner.methods.owl import OwlAllocation

        for name in _owl_methods(self.config):
            for sparsity, token in sparsity_patterns(self.config):
                try:
                    spec = SparsitySpec.parse(float(sparsity), pattern_of_token(token))
                except DprunerError:
                    continue  # a bad pattern, which `patterns` names
                try:
                    OwlAllocation.check_plan(name, spec, streamed=False)
                except DprunerError as error:
                    self.problem(f"methods.{name}.allocation", str(error))

    def braces(self) -> None:
        """`results` and the local data files are parts of Snakemake's file patterns, where
        `{name}` is a wildcard and no escape exists (and the rules `str.format` the patterns):
        a brace there would stop the plan with Snakemake's WildcardError instead."""
        why = "holds a brace, which Snakemake would read as a wildcard in its file names"
        if {"{", "}"} & set(self.config["results"]):
            self.problem("results", f"{self.config['results']!r} {why}; name another folder")
        for name in (GENERAL, *self.config["domains"]):
            for key, source in _sources(domain_parts(self.config, name)).items():
                if {"{", "}"} & set(source.get("path", "")):
                    self.problem(
                        f"{name}.{key}.source.path",
                        f"{source['path']!r} {why}; rename the file or its folder",
                    )

    def section(self, name: str, domain: Domain) -> None:
        """Every part of `domain` a job reads (the others are None)."""
        if domain.calibration is not None:
            self.calibration(name, domain)
        if domain.perplexity is not None:
            self.perplexity(name, domain.perplexity)
        for index, task in enumerate(domain.tasks or []):
            self.task(name, index, task)

    def raise_if_any(self, source: str) -> None:
        if self.problems:
            lines = "\n".join(f"  {line}" for line in self.problems)
            raise ConfigError(
                f"{source}: preflight found {len(self.problems)} problem(s):\n{lines}"
            )


def _owl_methods(config: dict) -> list[str]:
    return [
        name for name, options in config["methods"].items() if options.get("allocation") == "owl"
    ]


def _field_key(task: Task, field: str) -> str:
    """The task key that names `field`."""
    if task.kind == "summarization":
        return "target_field"
    return "label_field" if field == task.label_field else "choices_field"


def _field_names(task: Task) -> list[str]:
    names = [task.label_field]
    choices_field = task.choices_field
    if not task.choices and choices_field:
        names += choices_field if isinstance(choices_field, list) else [choices_field]
    return names


def check_results_folder(results: str, workdir: str | Path = ".") -> None:
    """The results folder must not be the working folder or one of its parents."""
    if any(ord(c) < 32 for c in results):
        raise ConfigError(f"results: {results!r} holds a control character")
    resolved = (Path(workdir) / results).resolve()
    here = Path(workdir).resolve()
    if resolved == here or resolved in here.parents:
        raise ConfigError(
            f"results: {results!r} is the working folder or one of its parents; "
            "name a folder of its own (e.g. results/run)"
        )


def check_results_owner(results: str, workdir: str | Path = ".") -> None:
    """The results folder is new, empty or one that dpruner created: a run never replaces a
    user's files in it (dpruner.io.results_folder_problem)."""
    problem = results_folder_problem(Path(workdir) / results)
    if problem:
        raise ConfigError(f"results: {results!r} {problem}")


def check_config(
    config: dict,
    source: str = "config",
    load: Loader | None = None,
    check_hub: bool = False,
    workdir: str | Path = ".",
) -> None:
    """Check every section, task and pattern of a validated config; one ConfigError lists all."""
    check_results_folder(config["results"], workdir)
    check_results_owner(config["results"], workdir)
    checker = _Checker(config_settings(config), load, check_hub, config)
    checker.braces()
    for name in (GENERAL, *config["domains"]):
        checker.section(name, domain_parts(config, name))
    checker.patterns()
    checker.matched_calibration()
    checker.baselines()
    checker.quantization()
    checker.streaming()
    checker.allocation()
    checker.raise_if_any(source)


def check_section(
    name: str, domain: Domain, settings: Settings, load: Loader | None = None
) -> None:
    """The preflight of the parts of one section a job reads (hub sources included), before
    model work: `prepare-data` checks its calibration, `evaluate` its perplexity and tasks."""
    checker = _Checker(settings, load, check_hub=True)
    checker.section(name, domain)
    checker.raise_if_any(f"domain '{name}'")


def check_calibration(spec: PrepareDataSpec, load: Loader | None = None) -> None:
    """`prepare-data`'s preflight: its calibration entries."""
    settings = Settings(
        eval_fraction=spec.eval_fraction,
        seed=spec.seed,
        calibration_tokens=spec.nsamples * spec.seqlen,
    )
    check_section(spec.domain, spec.entries, settings, load)


def check_evaluation(spec: EvaluateSpec, domains: list[str], load: Loader | None = None) -> None:
    """`evaluate`'s preflight: the perplexity text and tasks of each of `domains`."""
    settings = Settings(
        eval_fraction=spec.eval_fraction, seed=spec.seed, evaluation=spec.evaluation
    )
    for domain in domains:
        check_section(domain, spec.domains[domain], settings, load)


def check_device(device: str, key: str) -> None:
    """`device` exists on this machine: a missing GPU is one line naming `key`, not a traceback
    from the first model load. The Snakefile checks it when jobs start on this machine (not from
    a cluster's submit host, which may have no GPU), and every step checks its --device."""
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(
                f"{key}: {device!r}, but this machine has {count} CUDA device(s)"
                f"{'' if torch.version.cuda else ' (this torch is built without CUDA)'}; "
                "choose cpu, or run where the GPU is"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps', but this machine has no MPS device; choose cpu")
