"""Bootstrap intervals against analytic ones, known shifts and null cases on synthetic data."""

import json
import math

import numpy as np
import pytest
import torch
from tiny import tiny_model

from dpruner import stats
from dpruner.evaluation.metrics import macro_f1
from dpruner.evaluation.perplexity import sliding_window_perplexity

Z95 = 1.959963984540054


def test_resample_indices_are_seeded_and_drawn_once_as_a_matrix():
    first = stats.resample_indices(50, 200, seed=3)
    assert first.shape == (200, 50) and first.min() >= 0 and first.max() < 50
    assert np.array_equal(first, stats.resample_indices(50, 200, seed=3))
    assert not np.array_equal(first, stats.resample_indices(50, 200, seed=4))


def test_bootstrap_ci_of_a_proportion_matches_the_binomial_interval():
    # 120 of 400 correct: p = 0.3, se = sqrt(0.3 * 0.7 / 400) = 0.0229.
    values = np.zeros(400)
    values[:120] = 1
    ci = stats.bootstrap_ci(values, resamples=10_000, seed=0)
    p, n = 0.3, 400
    se = math.sqrt(p * (1 - p) / n)
    wald = (p - Z95 * se, p + Z95 * se)
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2))
    wilson = (centre - half, centre + half)
    assert ci.estimate == p
    # The resampled proportion lives on a grid of 1/400 = 0.0025; the 2.5 % quantile of 10,000
    # resamples has a Monte Carlo error of sqrt(0.025 * 0.975 / 10_000) / density(2.55 per 0.01)
    # = 0.0006. Wald's endpoints are what the percentile bootstrap estimates (the binomial is
    # nearly symmetric at n = 400): within one grid step. Wilson's are shifted towards 0.5 by
    # 0.0017-0.0021: within 0.004 (that shift plus three Monte Carlo errors).
    assert ci.low == pytest.approx(wald[0], abs=0.0025)
    assert ci.high == pytest.approx(wald[1], abs=0.0025)
    assert ci.low == pytest.approx(wilson[0], abs=0.004)
    assert ci.high == pytest.approx(wilson[1], abs=0.004)
    assert ci.se == pytest.approx(se, rel=0.05)
    assert (ci.level, ci.resamples, ci.seed) == (0.95, 10_000, 0)


def test_bootstrap_ci_is_reproducible_and_json_ready():
    values = np.random.default_rng(0).random(100)
    first = stats.bootstrap_ci(values, resamples=500, seed=7)
    assert first == stats.bootstrap_ci(values, resamples=500, seed=7)
    assert json.loads(json.dumps(first.to_dict())) == first.to_dict()


def test_blocks_of_resamples_do_not_change_the_interval(monkeypatch):
    values = np.random.default_rng(1).random(300)
    whole = stats.bootstrap_ci(values, resamples=400, seed=2)
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 1000)  # 3 resamples per block
    assert stats.bootstrap_ci(values, resamples=400, seed=2) == whole


def test_macro_f1_statistic_equals_the_metric_on_every_resample():
    rng = np.random.default_rng(0)
    gold = rng.choice(["yes", "no", "maybe"], size=60, p=[0.5, 0.4, 0.1]).tolist()
    predicted = rng.choice(["yes", "no", "maybe"], size=60, p=[0.7, 0.25, 0.05]).tolist()
    g, p, classes = stats.encode_labels(gold, predicted)
    statistic = stats.macro_f1_statistic(len(classes))
    indices = stats.resample_indices(60, 50, seed=0)
    vectorised = statistic(g[indices], p[indices])
    one_by_one = [macro_f1([gold[i] for i in row], [predicted[i] for i in row]) for row in indices]
    assert vectorised == pytest.approx(one_by_one)
    ci = stats.bootstrap_ci((g, p), statistic, resamples=300, seed=0)
    assert ci.estimate == pytest.approx(macro_f1(gold, predicted))
    assert ci.low < ci.estimate < ci.high
    labels = ["maybe", "no", "yes", "unsure"]  # a fourth class never seen
    g, p, classes = stats.encode_labels(gold, predicted, labels)
    fixed = stats.macro_f1_statistic(len(classes), fixed_classes=True)
    expected = macro_f1(gold, predicted, labels)
    assert fixed(g[None], p[None])[0] == pytest.approx(expected)
    assert expected == pytest.approx(macro_f1(gold, predicted) * 3 / 4)
    with pytest.raises(ValueError, match="not among"):
        stats.encode_labels(gold, predicted, ["yes", "no"])


def test_a_statistic_can_take_the_resampled_indices_themselves():
    # Corpus-level ROUGE-like recall: sum of overlaps over sum of reference lengths.
    overlap = np.array([3.0, 0.0, 5.0, 2.0])
    reference = np.array([4.0, 6.0, 5.0, 8.0])

    def recall(index):
        return overlap[index].sum(-1) / reference[index].sum(-1)

    ci = stats.bootstrap_ci(np.arange(4), recall, resamples=200, seed=0)
    assert ci.estimate == pytest.approx(10 / 23)
    same = stats.bootstrap_ci((overlap, reference), stats.ratio_of_sums, resamples=200, seed=0)
    assert same == ci


def accuracy_pair(n, shift, seed):
    """0/1 scores of A and B on n items, each drawn independently given the item's difficulty, so
    that (A, B) is exchangeable under the null; B then right on `shift` * n more items.

    Difficulty ~ Beta(0.2, 0.2): most items are easy or hard for both systems (two prunings of one
    model agree on most items), and the two disagree on about 14 % of them.
    """
    rng = np.random.default_rng(seed)
    difficulty = rng.beta(0.2, 0.2, size=n)
    a = (rng.random(n) < difficulty).astype(float)
    b = (rng.random(n) < difficulty).astype(float)
    b[rng.choice(np.flatnonzero(b == 0), size=round(shift * n), replace=False)] = 1
    return a, b


def test_paired_bootstrap_finds_a_five_point_accuracy_gain():
    a = (np.random.default_rng(0).random(500) < 0.5).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:25]] = 1  # B = A + 0.05 on the same 500 items
    result = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
    assert result.estimate == pytest.approx(0.05)
    # 25 discordant items: se = sqrt(0.05 * 0.95 / 500) = 0.0097
    assert result.low == pytest.approx(0.05 - Z95 * 0.0097, abs=0.004)
    assert result.high == pytest.approx(0.05 + Z95 * 0.0097, abs=0.004)
    assert result.significant and result.null == 0.0 and result.contrast == "difference"


def test_paired_bootstrap_does_not_flag_a_null_case():
    a, b = accuracy_pair(500, shift=0.0, seed=0)
    result = stats.paired_bootstrap(a, b, resamples=2000, seed=0)
    assert result.estimate == pytest.approx(b.mean() - a.mean())
    assert result.low < 0 < result.high and not result.significant


def test_paired_bootstrap_flags_five_percent_of_null_cases_and_most_noisy_gains():
    def flagged(shift):
        return sum(
            stats.paired_bootstrap(
                *accuracy_pair(500, shift, seed), resamples=1000, seed=seed
            ).significant
            for seed in range(200)
        )

    # Null: 5 % expected, 10 of 200 (binomial sd 3.1). A gain of 5 points: about 2.8 standard
    # errors of the paired difference here, so a test at 5 % should find it about 80 % of the time.
    assert 2 <= flagged(0.0) <= 20
    assert flagged(0.05) >= 0.65 * 200


def documents(n, seed):
    """Per-document NLL sums and token counts: lengths 50-500, per-token NLL varying by document."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 500, size=n)
    nll = tokens * rng.normal(3.0, 0.4, size=n)
    return nll, tokens


def test_perplexity_ci_is_a_ratio_of_sums_at_the_point_estimate():
    nll, tokens = documents(80, seed=0)
    ci = stats.perplexity_ci(nll, tokens, resamples=1000, seed=0)
    assert ci.estimate == pytest.approx(math.exp(nll.sum() / tokens.sum()), rel=1e-12)
    assert ci.estimate == pytest.approx(stats.perplexity(nll, tokens), rel=1e-12)
    assert ci.estimate != pytest.approx(np.mean(np.exp(nll / tokens)), rel=1e-3)
    assert ci.low < ci.estimate < ci.high


def test_paired_perplexity_ratio_finds_a_three_percent_rise_and_not_a_null_one():
    rng = np.random.default_rng(1)
    nll_a, tokens = documents(100, seed=1)
    noise = rng.normal(0, 0.05, size=100) * np.sqrt(tokens)  # per-document, zero mean
    nll_b = nll_a + tokens * math.log(1.03) + noise
    shifted = stats.paired_perplexity_ratio(nll_a, nll_b, tokens, resamples=2000, seed=0)
    exact = stats.perplexity(nll_b, tokens) / stats.perplexity(nll_a, tokens)
    assert shifted.estimate == pytest.approx(exact, rel=1e-12)
    assert shifted.estimate == pytest.approx(1.03, abs=0.002)
    assert shifted.significant and shifted.low > 1 and shifted.null == 1.0
    # The pairing: A's own interval is far wider than the ratio's, so two separate intervals
    # would overlap and miss the shift.
    alone = stats.perplexity_ci(nll_a, tokens, resamples=2000, seed=0)
    assert (alone.high / alone.low - 1) > 10 * (shifted.high / shifted.low - 1)

    null = stats.paired_perplexity_ratio(nll_a, nll_a + noise, tokens, resamples=2000, seed=0)
    assert null.low < 1 < null.high and not null.significant


def test_units_for_half_width_predict_the_interval_of_a_larger_sample():
    # Paired per-window log ratios with a 3 % shift and SD 0.1: the need estimated from 200
    # windows is near the analytic (1.96 x 0.1 / log 1.01)^2 = 384, and that many fresh windows
    # give a half-width near the target (both within sampling error: 10 % SD over seeds).
    rng = np.random.default_rng(1)

    def half_width(n: int) -> float:
        tokens = np.full(n, 500.0)
        nll_a = rng.normal(3.0, 0.3, n) * tokens
        nll_b = nll_a + rng.normal(np.log(1.03), 0.1, n) * tokens
        ratio = stats.paired_perplexity_ratio(nll_a, nll_b, tokens, resamples=2000, seed=0)
        return stats.log_half_width(ratio.low, ratio.high)

    target = math.log(1.01)
    needed = stats.units_for_half_width(200, half_width(200), target)
    assert needed == pytest.approx((1.96 * 0.1 / target) ** 2, rel=0.2)
    assert half_width(needed) == pytest.approx(target, rel=0.2)
    assert stats.units_for_half_width(8, 0.05, 0.05) == 8
    assert stats.log_half_width(0.9, 1.1) == pytest.approx((math.log(1.1) - math.log(0.9)) / 2)


def test_paired_comparisons_need_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        stats.paired_bootstrap(np.ones(5), np.ones(6), resamples=10, seed=0)
    with pytest.raises(ValueError, match="contrast"):
        stats.paired_bootstrap(np.ones(5), np.ones(5), contrast="odds", resamples=10, seed=0)
    with pytest.raises(ValueError, match="not finite"):
        stats.perplexity_ci([1.0, 2.0], [0, 0], resamples=10, seed=0)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0)


@pytest.mark.parametrize("stride,bos", [(16, "none"), (5, "none"), (6, "window")])
def test_per_window_nll_sums_to_the_total(model, stride, bos):
    ids = torch.randint(0, 96, (90,), generator=torch.Generator().manual_seed(2))
    result = sliding_window_perplexity(
        model, ids, 16, stride, bos_id=1, bos=bos, batch_size=3, progress=False
    )
    assert len(result["window_nll"]) == len(result["window_tokens"]) == result["windows"]
    assert sum(result["window_tokens"]) == result["tokens_scored"]
    assert math.fsum(result["window_nll"]) == pytest.approx(result["nll_sum"], rel=1e-12)
    ppl = stats.perplexity(result["window_nll"], result["window_tokens"])
    assert ppl == pytest.approx(result["ppl"], rel=1e-12)
    assert json.loads(json.dumps(result)) == result
    assert all(type(n) is int for n in result["window_tokens"])


@pytest.mark.parametrize(("correct", "expected"), [(60, "signal"), (52, "at chance")])
def test_the_sanity_verdict_needs_two_standard_errors_above_the_better_chance(correct, expected):
    # 100 items of two choices: 60 right is 0.10 above 0.5 chance, two bootstrap standard errors
    # (2 x 0.049) below; 52 right is 0.02 above.
    scores = np.array([1.0] * correct + [0.0] * (100 - correct))
    accuracy = stats.bootstrap_ci(scores, resamples=2000, seed=0)
    p = correct / 100
    assert accuracy.se == pytest.approx(math.sqrt(p * (1 - p) / 100), abs=0.003)
    assert stats.chance_verdict(accuracy, uniform=0.5, majority=0.5) == expected
    # The majority class counts when it beats uniform chance: 0.60 against 0.58 is at chance.
    assert stats.chance_verdict(accuracy, uniform=0.5, majority=0.58) == "at chance"
    # Items with different numbers of choices have no uniform chance (None).
    assert stats.chance_verdict(accuracy, uniform=None, majority=0.3) == "signal"
