"""Flags that several steps take, written once, and the flags of a job spec (dpruner.specs),
generated from its fields."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields, is_dataclass, replace

from dpruner.errors import DprunerError


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model directory")


def add_spec_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spec", help="the job's spec as JSON (from the workflow; dpruner.specs), for the flags"
    )


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if an earlier dpruner step wrote it (never a file or folder of "
        "yours, never an input)",
    )


def spec_fields(cls) -> list[tuple[tuple[str, ...], object, type]]:
    """(path of field names, field, type) of every field of `cls` that has a flag, nested
    dataclasses' fields included (their flags are named by the last name only)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in fields(cls):
        if f.metadata.get("flag") == "":
            continue
        if is_dataclass(hints[f.name]):
            found += [((f.name, *path), g, t) for path, g, t in spec_fields(hints[f.name])]
        else:
            found.append(((f.name,), f, hints[f.name]))
    return found


def flag_of(path: tuple[str, ...], f) -> str:
    return f.metadata.get("flag") or f"--{path[-1].replace('_', '-')}"


def add_spec_args(parser: argparse.ArgumentParser, cls) -> None:
    """`--spec JSON` and the flags of `cls` (`add_field_args`)."""
    add_spec_arg(parser)
    add_field_args(parser, cls)


def add_stream_arg(parser: argparse.ArgumentParser) -> None:
    from dpruner.specs import STREAM_HELP

    parser.add_argument("--stream-blocks", action="store_true", help=STREAM_HELP)


def add_field_args(parser: argparse.ArgumentParser, cls) -> None:
    """A flag per field of `cls`: the field's type, its help with the field's default. Every
    flag defaults to None, so that `from_args` knows what was given."""
    for path, f, hint in spec_fields(cls):
        argument = {"dest": "_".join(path), "default": None, "help": f.metadata.get("help", "")}
        if len(path) > 1:
            argument["metavar"] = path[-1].upper()
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
        kind = inner[0]
        if kind is bool:
            argument["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float):
            argument["type"] = kind
        if f.metadata.get("choices"):
            argument["choices"] = f.metadata["choices"]
        if f.default not in (MISSING, None):
            argument["help"] = f"{argument['help']} (default: {f.default})".lstrip()
        argument["help"] = argument["help"].replace("%", "%%")
        parser.add_argument(flag_of(path, f), **argument)


def given_flags(args, cls) -> list[str]:
    return [
        flag_of(path, f)
        for path, f, _ in spec_fields(cls)
        if getattr(args, "_".join(path)) is not None
    ]


def spec_from_args(args, cls, **values):
    """`cls` from `--spec`, or from its flags (the fields' defaults for those not given) and
    `values`; both together are refused."""
    if args.spec:
        if given := given_flags(args, cls):
            raise DprunerError(f"--spec holds every option: not with {', '.join(given)}")
        return cls.from_json(args.spec)
    return from_args(args, cls, **values)


def from_args(args, cls, **values):
    """`cls` from its flags, the fields' defaults for those not given, and `values`."""
    nested = {}
    for path, _field, _ in spec_fields(cls):
        value = getattr(args, "_".join(path))
        if value is not None:
            nested.setdefault(path[:-1], {})[path[-1]] = value
    top = {**nested.pop((), {}), **values}
    hints = typing.get_type_hints(cls)
    for (name,), given in nested.items():
        top[name] = replace(hints[name](), **given)
    missing = [
        flag_of((f.name,), f)
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in top
    ]
    if missing:
        raise DprunerError(f"give {', '.join(missing)} (or --spec JSON)")
    return cls(**top)
