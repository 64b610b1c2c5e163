"""Load the benchmark config, validate it against the JSON schema, and look up its parts.

Errors are one line per problem, naming the file, the key path and the offending value: the
Snakefile and every CLI step print the same messages.
"""

from __future__ import annotations

import copy
import functools
import json
from decimal import Decimal
from pathlib import Path

import yaml

from dpruner.errors import ConfigError, DprunerError

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The task catalogue: {domain: {task name: task definition}}; a config task `{use: NAME, ...}`
# is expanded from it (expand_tasks).
TASKS = REPO / "config" / "tasks.yaml"
# Longest rendering of an offending value in a message.
VALUE_CHARS = 80


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key written twice in one mapping is an error: PyYAML keeps
    the last value without a word. Keys a merge (`<<: *anchor`) brings in may be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"duplicate key {key!r} (first on line {first[key]})",
                        problem_mark=key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`; invalid YAML (a key written twice included) names the file,
    line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            config = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not UTF-8 text ({error.reason}); a config is a YAML text file"
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(config).__name__}")
    return config


def load_config(path: str | Path) -> dict:
    """The config at `path`, its `{use: NAME}` tasks expanded from the catalogue, validated."""
    config = read_yaml(path)
    expand_tasks(config, source=str(path))
    validate_config(config, source=str(path))
    return config


def load_catalogue(path: str | Path = TASKS) -> dict[str, dict]:
    """{task name: definition with its `name`} of the task catalogue, in file order."""
    return {
        name: task for tasks in catalogue_domains(path).values() for name, task in tasks.items()
    }


def catalogue_domains(path: str | Path = TASKS) -> dict[str, dict[str, dict]]:
    """{domain: {task name: definition with its `name`}} of the task catalogue."""
    data = read_yaml(path)
    domains, seen = {}, set()
    for domain, tasks in data.items():
        if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
            raise ConfigError(f"{path}: '{domain}' must map task names to task definitions")
        if twice := seen & set(tasks):
            raise ConfigError(f"{path}: task(s) {', '.join(sorted(twice))} defined twice")
        seen |= set(tasks)
        domains[domain] = {name: {"name": name, **task} for name, task in tasks.items()}
    return domains


def expand_tasks(config: dict, source: str = "config", catalogue: dict | None = None) -> dict:
    """Replace, in place, every task `{use: NAME, **overrides}` of `general` and `domains` by the
    catalogue's definition of NAME (named NAME) updated with the overrides; `use` stays as a
    record of where the task came from. An unknown name is one line naming the key."""
    sections = [("general", config.get("general"))]
    domains = config.get("domains")
    if isinstance(domains, dict):
        sections += [(f"domains.{name}", section) for name, section in domains.items()]
    for key, section in sections:
        tasks = section.get("tasks") if isinstance(section, dict) else None
        if not isinstance(tasks, list):
            continue  # the schema reports it
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or "use" not in task:
                continue
            if catalogue is None:
                catalogue = load_catalogue()
            name = task["use"]
            if not isinstance(name, str) or name not in catalogue:
                raise ConfigError(
                    f"{source}: {key}.tasks.{index}.use: unknown task {name!r}; the catalogue "
                    f"({TASKS.relative_to(REPO)}) has: {', '.join(catalogue)}"
                )
            tasks[index] = copy.deepcopy({**catalogue[name], **task})
    return config


def schema_errors(config: dict) -> list[str]:
    """One line per schema violation: `key.path: message (value: ...)`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    lines = dict.fromkeys(_line(error) for error in errors)
    return list(lines)


def config_errors(config: dict) -> list[str]:
    """The schema violations, or, for a config the schema accepts, what the schema cannot say:
    two tasks of one domain with the same name (their results would be one)."""
    return schema_errors(config) or duplicate_task_names(config)


def duplicate_task_names(config: dict) -> list[str]:
    """One line per task whose name an earlier task of its section has (after expand_tasks)."""
    sections = {"general": config["general"]}
    sections.update({f"domains.{name}": domain for name, domain in config["domains"].items()})
    lines = []
    for key, section in sections.items():
        first: dict[str, int] = {}
        for index, task in enumerate(section["tasks"]):
            name = task["name"]
            if name in first:
                lines.append(
                    f"{key}.tasks.{index}.name: {name!r} is also the name of task {first[name]}; "
                    "give each task of a domain its own name (`name:` renames a catalogue task)"
                )
            first.setdefault(name, index)
    return lines


def validate_config(config: dict, source: str = "config") -> None:
    """Raise ConfigError listing every problem config_errors finds, each with the key it
    concerns."""
    lines = config_errors(config)
    if lines:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(f"  {line}" for line in lines))


def _line(error) -> str:
    specific = _most_specific(error)
    key = ".".join(str(p) for p in specific.absolute_path) or "(top level)"
    return f"{key}: {_message(specific)}"


def _most_specific(error):
    """For oneOf/anyOf/allOf failures, the sub-error that best explains them."""
    import jsonschema

    while error.context:
        error = jsonschema.exceptions.best_match(error.context)
    return error


def _message(error) -> str:
    """The validator's complaint without the schema, and the value it concerns, shortened."""
    value = json.dumps(error.instance, default=str)
    if len(value) > VALUE_CHARS:
        value = value[: VALUE_CHARS - 3] + "..."
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unknown = [key for key in error.instance if key not in allowed]
        return f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
    if error.validator in ("type", "enum", "const", "pattern", "oneOf", "anyOf", "not"):
        expected = {
            "type": f"expected type {error.validator_value}",
            "enum": f"expected one of {error.validator_value}",
            "const": f"expected {error.validator_value!r}",
            "pattern": f"does not match {error.validator_value!r}",
            "oneOf": "matches none (or several) of the allowed forms",
            "anyOf": "matches none of the allowed forms",
            "not": "is not allowed",
        }[error.validator]
        return f"{value} {expected}"
    if error.validator == "required":
        return error.message
    if error.validator == "maxLength":
        return f"{value} is longer than {error.validator_value} characters"
    return f"{error.message.replace(json.dumps(error.instance), value)}"


@functools.cache
def _schema() -> dict:
    with SCHEMA.open() as f:
        return yaml.safe_load(f)


def schema_entry(name: str) -> dict:
    """The schema's `$defs.<name>`."""
    return _schema()["$defs"][name]


def schema_default(name: str):
    """The default of the schema's `$defs.<name>`: an option's default is written there only."""
    return schema_entry(name)["default"]


def value_errors(name: str, value) -> list[str]:
    """What the schema's `$defs.<name>` says against `value`, one line each."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema_entry(name))
    return [_message(_most_specific(error)) for error in validator.iter_errors(value)]


def method_kinds() -> list[str]:
    """The method kinds the schema knows (`$defs.method.properties.kind`)."""
    return _schema()["$defs"]["method"]["properties"]["kind"]["enum"]


def kind_properties(kind: str) -> dict:
    """The keys the schema allows a method of `kind`: its `$defs.method.allOf` entry's."""
    for case in _schema()["$defs"]["method"]["allOf"]:
        condition = case["if"]["properties"]["kind"]
        if kind == condition.get("const") or kind in condition.get("enum", ()):
            return case["then"]["properties"]
    raise DprunerError(f"the config schema has no entry for method kind '{kind}'")


def sparsity_token(value: float) -> str:
    """A sparsity as file names and job ids write it: the shortest decimal that reads back as
    the same float, without an exponent (1e-05 is `0.00001`, matching the workflow's wildcard
    constraint). Distinct sparsities never share a job, and a job runs at exactly the configured
    value (`1:3` at 0.3333333333333333, which its N:M check requires)."""
    return format(Decimal(repr(float(value))), "f")


def baseline_methods(config: dict) -> list[str]:
    """The methods the report compares every model with: `baselines` where the config names
    them, else every method that is neither D-Pruner nor mixed-calibrated (the published ones)."""
    if "baselines" in config:
        return list(config["baselines"])
    return [
        name
        for name, options in (config.get("methods") or {}).items()
        if options["kind"] != "dpruner" and options.get("calibration") != "mixed"
    ]


def unquantized_twins(methods: dict) -> dict[str, str | None]:
    """{quantized method: its 16-bit twin}, the twin being the method of config `methods` whose
    options are the same but for `quantize` (None where there is no such method)."""
    return {
        name: next(
            (
                other
                for other, others in methods.items()
                if "quantize" not in others
                and others == {k: v for k, v in options.items() if k != "quantize"}
            ),
            None,
        )
        for name, options in methods.items()
        if "quantize" in options
    }


def calibration_size_series(config: dict) -> list[dict[str, int]]:
    """Groups of domains whose entries are the same but for their calibration entries' `count`,
    as {domain: instances (the counts' sum)} in order of size, for the figure of each metric
    against the calibration size; only domains where every calibration entry has a `count`, and
    only groups of two sizes or more."""
    groups: dict[str, dict[str, int]] = {}
    for name, domain in (config.get("domains") or {}).items():
        entries = domain.get("calibration") or []
        if not entries or any("count" not in entry for entry in entries):
            continue
        uncounted = [{k: v for k, v in entry.items() if k != "count"} for entry in entries]
        key = json.dumps({**domain, "calibration": uncounted}, sort_keys=True)
        groups.setdefault(key, {})[name] = sum(entry["count"] for entry in entries)
    return [
        dict(sorted(group.items(), key=lambda item: item[1]))
        for group in groups.values()
        if len(set(group.values())) > 1
    ]


def domain_config(config: dict, name: str) -> dict:
    """The `general` section or one entry of `domains`; both have calibration, perplexity, tasks."""
    if name == "general":
        return config["general"]
    domains = config.get("domains", {})
    if name not in domains:
        raise ConfigError(
            f"unknown domain '{name}'; the config defines: general, {', '.join(domains)}"
        )
    return domains[name]
