"""Pure scoring functions on hand-made inputs."""

import pytest
from sklearn.metrics import f1_score

from dpruner.evaluation.metrics import (
    accuracy,
    first_line,
    macro_f1,
    majority_rate,
    normalised_argmax,
    rouge_scores,
)


def test_normalised_argmax_divides_by_token_count():
    # Raw sums prefer the short candidate (-4 > -6); per token the long one wins (-2 > -4).
    assert normalised_argmax([-6.0, -4.0], [3, 1]) == 0
    assert normalised_argmax([-6.0, -4.0], [1, 1]) == 1


def test_normalised_argmax_takes_the_first_of_equal_scores():
    assert normalised_argmax([-2.0, -4.0, -1.0], [2, 4, 1]) == 0


def test_macro_f1_on_a_hand_made_confusion():
    gold = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "c", "c"]
    # a: tp 2, fp 0, fn 1 -> 0.8; b: tp 1, fp 1, fn 1 -> 0.5; c: tp 1, fp 1, fn 0 -> 2/3
    expected = (0.8 + 0.5 + 2 / 3) / 3
    assert macro_f1(gold, predicted) == pytest.approx(expected)
    assert macro_f1(gold, predicted) == pytest.approx(f1_score(gold, predicted, average="macro"))


def test_macro_f1_counts_a_never_predicted_class_as_zero():
    assert macro_f1([0, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx((2 / 3 + 0) / 2)


def test_accuracy_and_majority_rate():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    assert majority_rate(["x", "y", "x", "x"]) == 0.75


def test_rouge_of_identical_texts_is_one():
    scores = rouge_scores("Insulin lowers blood glucose.", "Insulin lowers blood glucose.")
    assert scores == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_rouge_of_disjoint_texts_is_zero():
    assert set(rouge_scores("alpha beta", "gamma delta").values()) == {0.0}


def test_first_line_cuts_at_the_first_newline_and_strips_a_closing_quote():
    assert first_line("\n  Aspirin for pain.'\nMore text") == "Aspirin for pain."
    assert first_line('A bill to tax hats."') == "A bill to tax hats."
