"""Load the benchmark config, validate it against the JSON schema, and look up its parts."""

from __future__ import annotations

from pathlib import Path

import yaml

from dpruner.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping, got {type(config).__name__}")
    validate_config(config, source=str(path))
    return config


def validate_config(config: dict, source: str = "config") -> None:
    """Raise ConfigError listing every schema violation, each with the key it concerns."""
    if not SCHEMA.is_file():
        return
    import jsonschema

    with SCHEMA.open() as f:
        schema = yaml.safe_load(f)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = dict.fromkeys(f"  {_key(error)}: {_message(error)}" for error in errors)
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines))


def _key(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _message(error) -> str:
    """The schema's message, with the most specific sub-error for oneOf/anyOf failures."""
    if error.context:
        import jsonschema

        return _message(jsonschema.exceptions.best_match(error.context))
    return error.message


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
