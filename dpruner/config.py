"""Load the benchmark config, validate it against the JSON schema, and look up its parts.

Errors are one line per problem, naming the file, the key path and the offending value: the
Snakefile and every CLI step print the same messages.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpruner.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
# Longest rendering of an offending value in a message.
VALUE_CHARS = 80


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`; invalid YAML names the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(config).__name__}")
    return config


def load_config(path: str | Path) -> dict:
    config = read_yaml(path)
    validate_config(config, source=str(path))
    return config


def parse_config_json(text: str) -> dict:
    """The config slice a workflow rule passes to its step (validated by the workflow already)."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config-json is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError("--config-json must be a JSON object")
    return config


def schema_errors(config: dict) -> list[str]:
    """One line per schema violation: `key.path: message (value: ...)`."""
    import jsonschema

    with SCHEMA.open() as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    lines = dict.fromkeys(_line(error) for error in errors)
    return list(lines)


def validate_config(config: dict, source: str = "config") -> None:
    """Raise ConfigError listing every schema violation, each with the key it concerns."""
    lines = schema_errors(config)
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
    return f"{error.message.replace(json.dumps(error.instance), value)}"


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
