"""The command line is built from the step modules: each registers its own subcommand."""

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dpruner.steps
from dpruner.cli import COMMANDS

REPO = Path(__file__).resolve().parent.parent
# Step module -> the one subcommand it registers.
STEPS = {
    "prepare_model": "prepare-model",
    "prepare_data": "prepare-data",
    "general_importance": "general-importance",
    "domain_scores": "domain-scores",
    "prune": "prune",
    "perplexity": "perplexity",
    "evaluate": "evaluate",
    "check_config": "check-config",
}
SHARED = {"common", "flags"}
# Registered by modules beside the steps (report tables, publishing, stored sizes).
OTHERS = ["aggregate", "plot", "summary", "compare-results", "publish", "stored-size"]


def test_every_step_module_is_known_and_on_the_command_line():
    modules = {info.name for info in pkgutil.iter_modules(dpruner.steps.__path__)}
    assert modules - SHARED == set(STEPS)
    on_command_line = {module.__name__ for module in COMMANDS}
    assert {f"dpruner.steps.{name}" for name in STEPS} <= on_command_line


@pytest.mark.parametrize(("name", "command"), STEPS.items())
def test_a_step_module_registers_exactly_its_subcommand(name, command):
    module = importlib.import_module(f"dpruner.steps.{name}")
    subparsers = argparse.ArgumentParser().add_subparsers()
    module.register(subparsers)
    assert list(subparsers.choices) == [command]
    assert subparsers.choices[command].get_default("func") is module.run


def test_python_m_dpruner_help_lists_every_step():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "dpruner", "--help"],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    )  # fmt: skip
    listed = result.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert sorted(listed) == sorted([*STEPS.values(), *OTHERS])
