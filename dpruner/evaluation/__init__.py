"""Evaluation: perplexity, multiple choice (accuracy, macro-F1) and summarization (ROUGE),
built as lm-eval tasks from config (algorithms.md section 6)."""

from dpruner.evaluation.runner import evaluate_domain, evaluate_model

__all__ = ["evaluate_domain", "evaluate_model"]
