"""Evaluation: perplexity, multiple choice (accuracy, macro-F1) and summarization (ROUGE),
built as lm-eval tasks from config (docs/methods.md#how-the-paper-evaluates)."""

__all__ = ["evaluate_domains", "evaluate_model"]


def __getattr__(name: str):
    # Imported on first use, so `dpruner.evaluation.perplexity` works without lm-eval installed.
    if name in __all__:
        from dpruner.evaluation import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'dpruner.evaluation' has no attribute '{name}'")
