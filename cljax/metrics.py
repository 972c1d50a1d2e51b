"""Continual-learning metrics from accuracy matrices.

``acc[i, j]`` is the accuracy on context j's test set after training on contexts 0..i; ``initial[j]``
the accuracy on context j before any training (for forward transfer).
"""

from __future__ import annotations

import numpy as np


def _square(acc: np.ndarray) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] != acc.shape[1]:
        raise ValueError(f"an accuracy matrix must be square (contexts x contexts), got shape {acc.shape}")
    return acc


def final_average_accuracy(acc: np.ndarray) -> float:
    """Mean accuracy over all contexts after the last one: the number the published tables report."""
    return float(_square(acc)[-1].mean())


def average_accuracy_curve(acc: np.ndarray) -> np.ndarray:
    """Mean accuracy over the contexts seen so far, after each context."""
    acc = _square(acc)
    return np.array([acc[i, : i + 1].mean() for i in range(len(acc))])


def forgetting(acc: np.ndarray) -> float:
    """Chaudhry et al. 2018: mean over earlier contexts of (best earlier accuracy - final accuracy)."""
    acc = _square(acc)
    t = len(acc)
    if t < 2:
        return 0.0
    best = np.array([acc[j : t - 1, j].max() for j in range(t - 1)])
    return float((best - acc[-1, : t - 1]).mean())


def backward_transfer(acc: np.ndarray) -> float:
    """Lopez-Paz & Ranzato 2017: mean over earlier contexts of (final accuracy - accuracy just after it)."""
    acc = _square(acc)
    t = len(acc)
    if t < 2:
        return 0.0
    return float((acc[-1, : t - 1] - np.diag(acc)[: t - 1]).mean())


def forward_transfer(acc: np.ndarray, initial: np.ndarray) -> float:
    """Lopez-Paz & Ranzato 2017: mean over later contexts of (accuracy before training on it - at init)."""
    acc = _square(acc)
    initial = np.asarray(initial, dtype=np.float64)
    t = len(acc)
    if initial.shape != (t,):
        raise ValueError(f"initial accuracies must have shape ({t},), got {initial.shape}")
    if t < 2:
        return 0.0
    return float(np.mean([acc[j - 1, j] - initial[j] for j in range(1, t)]))


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_sem needs at least one value")
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), sem


def summarize(acc: np.ndarray, initial: np.ndarray) -> dict[str, float]:
    """All scalar metrics of one seed's run, accuracies in %."""
    return {
        "final_avg_acc": 100 * final_average_accuracy(acc),
        "forgetting": 100 * forgetting(acc),
        "bwt": 100 * backward_transfer(acc),
        "fwt": 100 * forward_transfer(acc, initial),
    }
