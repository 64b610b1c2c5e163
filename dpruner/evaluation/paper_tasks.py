"""The paper's evaluation tasks (paper_tasks.yaml): hub ids, fields and templates per domain."""

from __future__ import annotations

from pathlib import Path

import yaml

PAPER_TASKS = Path(__file__).with_name("paper_tasks.yaml")


def paper_sections() -> dict:
    """{"general": section, "medical": section, "legal": section} in the config's domain shape."""
    with PAPER_TASKS.open() as f:
        return yaml.safe_load(f)
