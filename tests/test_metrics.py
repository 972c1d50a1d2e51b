"""Metrics on hand-made accuracy matrices."""

import numpy as np
import pytest

from cljax import metrics

ACC = np.array(
    [
        [0.9, 0.1, 0.2],
        [0.6, 0.8, 0.3],
        [0.5, 0.7, 0.9],
    ]
)


def test_final_average_accuracy_is_mean_of_last_row():
    assert metrics.final_average_accuracy(ACC) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_average_accuracy_curve_uses_contexts_seen_so_far():
    np.testing.assert_allclose(metrics.average_accuracy_curve(ACC), [0.9, 0.7, 0.7])


def test_forgetting_is_best_earlier_minus_final():
    # context 0: best 0.9 -> 0.5 (0.4); context 1: best 0.8 -> 0.7 (0.1)
    assert metrics.forgetting(ACC) == pytest.approx(0.25)


def test_backward_transfer_is_final_minus_just_learned():
    assert metrics.backward_transfer(ACC) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_forward_transfer_against_initial_accuracy():
    initial = np.array([0.1, 0.05, 0.1])
    assert metrics.forward_transfer(ACC, initial) == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)


def test_no_forgetting_when_accuracies_hold():
    acc = np.triu(np.ones((4, 4))) * 0 + np.tril(np.ones((4, 4)))
    assert metrics.forgetting(acc) == 0.0
    assert metrics.backward_transfer(acc) == 0.0


def test_single_context():
    acc = np.array([[0.7]])
    assert metrics.forgetting(acc) == 0.0
    assert metrics.final_average_accuracy(acc) == pytest.approx(0.7)


def test_mean_sem():
    mean, sem = metrics.mean_sem([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert sem == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert metrics.mean_sem([5.0]) == (5.0, 0.0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="square"):
        metrics.forgetting(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="initial"):
        metrics.forward_transfer(ACC, np.zeros(2))
