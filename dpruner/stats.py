"""Bootstrap intervals for per-item scores, perplexity, and paired comparisons of two systems.

Choices, shared by every function here:

- **Percentile bootstrap.** Items (multiple-choice questions, summaries, perplexity documents or
  windows) are resampled with replacement; the interval is the (1 - level) / 2 and
  (1 + level) / 2 quantiles of the statistic over the resamples (numpy's linear interpolation).
  The point estimate is the statistic on the data as observed, not the mean of the resamples.
- **Seeded and vectorised.** The resample indices are drawn once, as a (resamples, n) matrix,
  from ``numpy.random.default_rng(seed)``; the same seed, n and resample count give the same
  indices, so the same inputs give the same interval bit for bit. The resample count is an
  argument (no default hidden in a caller) and is reported with every interval.
- **Statistics see whole resamples.** A statistic takes the per-item arrays with a leading
  resample axis, shape (resamples, n), and returns one value per resample, shape (resamples,). The
  default is the mean (accuracy from 0/1 scores, mean per-item ROUGE). Several per-item arrays
  travel together (``(gold, predicted)`` for macro-F1, ``(overlap, reference_length)`` for a
  corpus-level ROUGE); passing ``numpy.arange(n)`` as the values hands the statistic the resampled
  index matrix itself, for any statistic of the items.
- **Perplexity is a ratio of sums.** ppl = exp(sum NLL / sum scored tokens) over documents (or
  sliding windows), as the evaluation computes it; its interval resamples documents and recomputes
  the ratio on each resample, never averaging per-document perplexities.
- **Paired comparisons use the same resample for both systems.** Two systems scored on the same
  items are resampled with one index matrix, so the item-to-item variation they share cancels. A
  difference (B - A, e.g. accuracy) has null 0; a ratio (B / A, e.g. ppl_B / ppl_A) has null 1. A
  comparison is significant at the given level when its interval excludes the null.

Large inputs are evaluated in blocks of resamples, so memory stays bounded without changing the
indices (they are drawn once, whatever the block size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Statistic = Callable[..., np.ndarray]
"""Per-item arrays, each of shape (resamples, n), to one value per resample, shape (resamples,)."""

CONTRASTS = ("difference", "ratio")
_BLOCK_ELEMENTS = 1 << 22  # resampled values held at once per array (32 MiB of float64)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval; `se` is the resamples' std."""

    estimate: float
    low: float
    high: float
    se: float
    level: float
    resamples: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedInterval(Interval):
    """B against A on the same items: estimate and interval of B - A or B / A.

    `significant` is True when the interval excludes `null` (0 for a difference, 1 for a ratio).
    """

    contrast: str
    null: float
    significant: bool


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """The (resamples, n) matrix of item indices drawn with replacement, one row per resample."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    if resamples < 1:
        raise ValueError(f"bootstrap needs at least one resample, got {resamples}")
    dtype = np.int32 if n < 2**31 else np.int64
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n), dtype=dtype)


def mean(values: np.ndarray) -> np.ndarray:
    """The default statistic: the mean over items (last axis)."""
    return values.mean(axis=-1)


def ratio_of_sums(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """sum(numerators) / sum(denominators) over items, e.g. NLL per token."""
    return numerators.sum(axis=-1) / denominators.sum(axis=-1)


def log_perplexity(nll_sums: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """log ppl = sum NLL / sum scored tokens over documents (the log of a ratio estimator)."""
    return ratio_of_sums(nll_sums, token_counts)


def perplexity_statistic(nll_sums: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """ppl = exp(sum NLL / sum scored tokens) over documents."""
    return np.exp(log_perplexity(nll_sums, token_counts))


def encode_labels(
    gold: Sequence, predicted: Sequence, labels: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray, list]:
    """Gold and predicted labels as integer codes into `labels`, by default the sorted classes
    seen in either; returns the codes and the classes."""
    if len(gold) != len(predicted) or not len(gold):
        raise ValueError("labels need equally long, non-empty gold and predicted sequences")
    seen = set(gold) | set(predicted)
    classes = sorted(seen, key=str) if labels is None else list(labels)
    if unknown := seen - set(classes):
        raise ValueError(f"labels {sorted(unknown, key=str)} are not among {classes}")
    code = {c: i for i, c in enumerate(classes)}
    return (
        np.array([code[g] for g in gold], dtype=np.int64),
        np.array([code[p] for p in predicted], dtype=np.int64),
        classes,
    )


def macro_f1_statistic(n_classes: int, fixed_classes: bool = False) -> Statistic:
    """Macro-F1 of integer-coded (gold, predicted) arrays, per resample (see `encode_labels`).

    As `evaluation.metrics.macro_f1`: the mean over classes of 2tp / (2tp + fp + fn), 0 for a class
    without true positives. Its classes are those seen in the resample's gold or predicted labels;
    with `fixed_classes` they are all `n_classes` (metrics.macro_f1's `labels` argument).
    """

    def statistic(gold: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        f1_sum = np.zeros(gold.shape[:-1])
        seen = np.zeros(gold.shape[:-1])
        for c in range(n_classes):
            is_gold, is_predicted = gold == c, predicted == c
            tp = (is_gold & is_predicted).sum(axis=-1)
            wrong = (is_gold ^ is_predicted).sum(axis=-1)  # fp + fn
            f1_sum += np.where(tp > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
            seen += (tp + wrong > 0) | fixed_classes
        return f1_sum / np.maximum(seen, 1)

    return statistic


def _as_arrays(values) -> tuple[np.ndarray, ...]:
    arrays = tuple(np.asarray(v) for v in (values if isinstance(values, tuple) else (values,)))
    n = len(arrays[0]) if arrays[0].ndim else 0
    if n == 0:
        raise ValueError("bootstrap needs at least one item")
    if any(a.ndim != 1 or len(a) != n for a in arrays):
        raise ValueError(
            f"bootstrap needs 1-D per-item arrays of one length, got shapes "
            f"{[a.shape for a in arrays]}"
        )
    return arrays


def _point(statistic: Statistic, arrays: tuple[np.ndarray, ...]) -> float:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return float(np.asarray(statistic(*(a[None, :] for a in arrays))).reshape(-1)[0])


def _replicates(
    statistic: Statistic, arrays: tuple[np.ndarray, ...], indices: np.ndarray
) -> np.ndarray:
    rows = max(1, _BLOCK_ELEMENTS // indices.shape[1])
    out = np.empty(indices.shape[0])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # checked in _quantiles
        for r0 in range(0, indices.shape[0], rows):
            block = indices[r0 : r0 + rows]
            out[r0 : r0 + rows] = statistic(*(a[block] for a in arrays))
    return out


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")


def _quantiles(
    estimate: float, replicates: np.ndarray, level: float, what: str
) -> tuple[float, float, float]:
    if not np.isfinite(estimate):
        raise ValueError(f"{what} is not finite on the data ({estimate})")
    bad = int((~np.isfinite(replicates)).sum())
    if bad:
        raise ValueError(f"{what} is not finite on {bad} of {len(replicates)} resamples")
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    se = float(replicates.std(ddof=1)) if len(replicates) > 1 else 0.0
    return float(low), float(high), se


def bootstrap_ci(
    values,
    statistic: Statistic = mean,
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """Percentile-bootstrap interval of `statistic` over items.

    `values` is one per-item array (0/1 correctness, per-item ROUGE) or a tuple of equally long
    per-item arrays resampled together (integer-coded gold and predicted labels for
    `macro_f1_statistic`); `statistic` maps them, with a leading resample axis, to one value per
    resample.
    """
    _check_level(level)
    arrays = _as_arrays(values)
    indices = resample_indices(len(arrays[0]), resamples, seed)
    estimate = _point(statistic, arrays)
    replicates = _replicates(statistic, arrays, indices)
    low, high, se = _quantiles(estimate, replicates, level, "the statistic")
    return Interval(estimate, low, high, se, level, resamples, seed)


def paired_bootstrap(
    values_a,
    values_b,
    statistic: Statistic = mean,
    *,
    contrast: str = "difference",
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> PairedInterval:
    """B - A (`contrast="difference"`) or B / A (`"ratio"`) of `statistic`, on the same items.

    `values_a` and `values_b` hold the two systems' per-item values in the same item order (each
    one array or a tuple, as in `bootstrap_ci`); every resample draws the same items for both.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    _check_level(level)
    a, b = _as_arrays(values_a), _as_arrays(values_b)
    if len(a[0]) != len(b[0]):
        raise ValueError(
            f"a paired comparison needs the same items: {len(a[0])} against {len(b[0])}"
        )
    indices = resample_indices(len(a[0]), resamples, seed)
    point_a, point_b = _point(statistic, a), _point(statistic, b)
    reps_a, reps_b = _replicates(statistic, a, indices), _replicates(statistic, b, indices)
    if contrast == "difference":
        estimate, replicates, null = point_b - point_a, reps_b - reps_a, 0.0
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            estimate, replicates, null = point_b / point_a, reps_b / reps_a, 1.0
    low, high, se = _quantiles(estimate, replicates, level, f"the {contrast} of B and A")
    significant = bool(low > null or high < null)
    return PairedInterval(
        float(estimate), low, high, se, level, resamples, seed, contrast, null, significant
    )


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """exp(sum NLL / sum scored tokens): the token-weighted perplexity of documents or windows."""
    arrays = _as_arrays((nll_sums, token_counts))
    return _point(perplexity_statistic, arrays)


def perplexity_ci(
    nll_sums: Sequence[float],
    token_counts: Sequence[int],
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> Interval:
    """Perplexity with its interval, resampling documents (or windows) with their token counts."""
    return bootstrap_ci(
        (np.asarray(nll_sums, dtype=np.float64), np.asarray(token_counts, dtype=np.float64)),
        perplexity_statistic,
        resamples=resamples,
        seed=seed,
        level=level,
    )


def paired_perplexity_ratio(
    nll_sums_a: Sequence[float],
    nll_sums_b: Sequence[float],
    token_counts_a: Sequence[int],
    token_counts_b: Sequence[int] | None = None,
    *,
    resamples: int,
    seed: int,
    level: float = 0.95,
) -> PairedInterval:
    """ppl_B / ppl_A on the same documents, with its paired interval (null 1).

    Token counts of B default to A's (one tokenizer); two tokenizers give their own counts for the
    same documents.
    """
    tokens_b = token_counts_a if token_counts_b is None else token_counts_b
    a = (np.asarray(nll_sums_a, dtype=np.float64), np.asarray(token_counts_a, dtype=np.float64))
    b = (np.asarray(nll_sums_b, dtype=np.float64), np.asarray(tokens_b, dtype=np.float64))
    return paired_bootstrap(
        a,
        b,
        perplexity_statistic,
        contrast="ratio",
        resamples=resamples,
        seed=seed,
        level=level,
    )


def log_half_width(ratio_low: float, ratio_high: float) -> float:
    """Half the width of a ratio interval on the log scale (a ratio's interval is asymmetric)."""
    return (np.log(ratio_high) - np.log(ratio_low)) / 2


def units_for_half_width(units: int, half_width: float, target: float) -> int:
    """Units (items, windows) that bring an interval of `half_width` on `units` to `target`: a
    half-width shrinks as one over the square root of the units. An estimate: a bootstrap on
    few units understates the spread, so the need of an 8-window interval is a lower bound."""
    return math.ceil(units * (half_width / target) ** 2)


def chance_verdict(accuracy: Interval, uniform: float | None, majority: float) -> str:
    """ "signal" when an accuracy exceeds the better chance level, max(uniform, majority), by more
    than two of its bootstrap standard errors; "at chance" otherwise. `uniform` (1 / choices) is
    None when the items have different numbers of choices."""
    chance = max(c for c in (uniform, majority) if c is not None)
    return "signal" if accuracy.estimate - chance > 2 * accuracy.se else "at chance"
