"""Classification metrics of the hyperspectral literature: OA, AA, Cohen's kappa (percent)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (sklearn's convention)."""
    return np.bincount(num_classes * np.asarray(labels) + np.asarray(predictions),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: np.ndarray) -> dict:
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    support = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), support, out=np.zeros_like(support), where=support > 0)
    overall = np.trace(confusion) / total
    expected = (confusion.sum(axis=0) * support).sum() / total**2
    kappa = (overall - expected) / (1 - expected) if expected < 1 else 1.0
    present = support > 0
    # A class with no test pixel has no accuracy: None in the list, left out of AA (and listed).
    return {
        "overall_accuracy": 100 * overall,
        "average_accuracy": 100 * per_class[present].mean(),
        "kappa": 100 * kappa,
        "per_class_accuracy": [100 * float(a) if p else None for a, p in zip(per_class, present)],
        "absent_classes": [int(i) for i in np.flatnonzero(~present)],
    }
