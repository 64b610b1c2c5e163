"""dpruner: extract domain-specific sparse LLMs with D-Pruner and compare it with the baselines."""

__version__ = "0.1.0"
