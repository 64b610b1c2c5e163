"""Command line: one subcommand per workflow step; each reads and writes files only."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys

import torch

from dpruner import published, stored_size
from dpruner.errors import DprunerError
from dpruner.lifecycle import start_step
from dpruner.report import commands as report_commands
from dpruner.steps import (
    check_config,
    domain_scores,
    evaluate,
    general_importance,
    perplexity,
    prepare_data,
    prepare_model,
    prune,
)

# Every module that registers subcommands, in the order `--help` lists them.
COMMANDS = (
    prepare_model,
    prepare_data,
    evaluate,
    prune,
    general_importance,
    domain_scores,
    perplexity,
    report_commands,
    published,
    stored_size,
    check_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dpruner", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _run(args):
    """The step; a full disk outside dpruner's own writers (which name their output) is one line
    naming the file where the OSError does."""
    try:
        return args.func(args)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        where = f"{error.filename}: " if error.filename else ""
        raise DprunerError(f"{where}no space left on device") from error


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_step(args.command)
    # De-quantised checkpoints give subnormal activations and Hessian entries; on CPU each one
    # costs a slow microcode path (a SparseGPT run on SmolLM2 took 357 s instead of 66 s).
    torch.set_flush_denormal(True)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from dpruner.distributed import launched, report_failure

    try:
        if getattr(args, "device", None):
            from dpruner.preflight import check_device

            check_device(args.device, "--device")
        summary = _run(args)
    except DprunerError as error:
        if launched():
            report_failure(error)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except BaseException as error:
        # Under torchrun, name the rank: torchrun then stops the other ranks and exits non-zero.
        if launched():
            report_failure(error)
        raise
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def entry(argv: list[str] | None = None) -> int:
    """`python -m dpruner`. Under torchrun an uncaught exception also goes to torchrun's error
    file, so torchrun's summary shows the failing rank's traceback."""
    from dpruner.distributed import launched

    if launched():
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(main)(argv)
    return main(argv)
