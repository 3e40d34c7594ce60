"""Decision thresholds fitted on calibration images, never on the test set."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def fit_threshold(scores: np.ndarray, labels: np.ndarray | None = None, quantile: float = 1.0) -> tuple[float, str]:
    """Choose the image-score threshold from calibration scores.

    Rule: when the calibration set holds only normal images (the default,
    carved from the training normals), the threshold is the ``quantile`` of
    their image scores (1.0, the default, is their maximum, so every
    calibration image is classified normal). When the user supplies a
    validation set with anomalous images too, the threshold maximizes F1 on it.

    Returns the threshold and a one-line description of the rule used.

    Raises ``ValueError`` when there are no scores or ``quantile`` is outside [0, 1].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no calibration scores: the calibration split is empty")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"invalid threshold quantile {quantile}: expected a value in [0, 1]")
    if labels is not None and 0 < int(np.sum(labels)) < len(labels):
        from defectscope.metrics.image import f1_max

        f1, threshold = f1_max(np.asarray(labels), scores)
        return float(threshold), f"F1-max on the labelled calibration set (F1 {f1:.3f})"
    threshold = float(np.quantile(scores, quantile, method="linear"))
    return threshold, f"quantile {quantile:g} of {scores.size} normal calibration image scores"
