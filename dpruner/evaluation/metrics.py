"""Pure scoring functions: normalised argmax, accuracy, macro-F1, ROUGE, chance levels.

They take plain Python values so that they can be checked on hand-made inputs; the lm-eval task
builders (harness.py) call them from `process_results` and aggregations.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.cache
def _rouge_scorer():
    # Imported on first use: rouge-score pulls in nltk and scipy (1.6 s), which evaluations
    # without a summarization task do not need.
    from rouge_score import rouge_scorer

    # The Porter stemmer is code, so stemming works offline (no nltk data needed).
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def normalised_argmax(loglikelihoods: Sequence[float], token_counts: Sequence[int]) -> int:
    """Index of the candidate with the highest log-likelihood per token (first on ties)."""
    if len(loglikelihoods) != len(token_counts) or not loglikelihoods:
        raise ValueError("need one token count per candidate and at least one candidate")
    scores = [ll / max(n, 1) for ll, n in zip(loglikelihoods, token_counts, strict=True)]
    return max(range(len(scores)), key=scores.__getitem__)


def accuracy(gold: Sequence, predicted: Sequence) -> float:
    if len(gold) != len(predicted) or not gold:
        raise ValueError("accuracy needs equally long, non-empty gold and predicted labels")
    return sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold)


def macro_f1(gold: Sequence, predicted: Sequence, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1, as sklearn's f1_score(average="macro").

    Classes default to those seen in gold or predicted; a class with no true and no predicted
    item has F1 = 0 (sklearn's zero_division=0).
    """
    if len(gold) != len(predicted) or not gold:
        raise ValueError("macro-F1 needs equally long, non-empty gold and predicted labels")
    classes = list(labels) if labels is not None else sorted(set(gold) | set(predicted), key=str)
    f1s = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != c and p == c for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == c and p != c for g, p in zip(gold, predicted, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


def majority_rate(labels: Sequence) -> float:
    """Share of the most frequent label: the accuracy of always answering the majority class."""
    if not labels:
        raise ValueError("majority rate of an empty label list")
    return Counter(labels).most_common(1)[0][1] / len(labels)


def first_line(generated: str) -> str:
    """The generated summary: leading whitespace dropped, cut at the first newline, a closing
    quote stripped (the paper's prompts open a quote that the model may close)."""
    line = generated.lstrip().split("\n", 1)[0].strip()
    return re.sub(r"[\"'\u201d\u2019]+$", "", line).strip()


def rouge_scores(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of one prediction against one reference."""
    return {name: s.fmeasure for name, s in _rouge_scorer().score(reference, prediction).items()}
