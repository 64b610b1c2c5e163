"""`make gpu-check` on a machine without CUDA: it plans without building the venv, and every
check in tests/test_gpu.py is skipped with its reason."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def test_make_gpu_check_dry_runs_with_the_system_python_and_no_venv():
    # Under `make test` the parent make's MAKELEVEL and MAKEFLAGS reach this make, which then
    # prints "Entering directory" lines unless told not to.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "gpu-check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    commands = result.stdout.strip().splitlines()
    assert commands == [
        "PYTHONPATH=. python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py",
        "PYTHONPATH=. python3 benchmarks/semi_structured.py --quick",
    ]
    assert not re.search(r"venv|pip", result.stdout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the checks run instead")
def test_every_gpu_check_is_skipped_with_its_reason_on_a_cpu():
    source = (REPO / "tests" / "test_gpu.py").read_text()
    tests = [
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_gpu.py"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = re.findall(r"^SKIPPED \[(\d+)\] tests/test_gpu.py:\d+: (.+)$", result.stdout, re.M)
    reasons = ("needs a CUDA device", "needs snakemake and lm-eval")
    assert skipped and all(any(r in reason for r in reasons) for _, reason in skipped)
    collected = int(re.search(r"(\d+) skipped", result.stdout).group(1))
    assert collected == sum(int(n) for n, _ in skipped) and collected >= len(tests) == 9
    assert "passed" not in result.stdout and "failed" not in result.stdout
