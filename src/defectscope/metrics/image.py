"""Image-level detection metrics: ROC, precision-recall, F1 and confusion counts.

All functions use one convention: a sample is anomalous when
``score > threshold``. Curve thresholds are therefore the next lower distinct
score below each operating point, and ``-inf`` where every sample is
predicted anomalous.

The areas match scikit-learn 1.9 (``roc_auc_score`` and
``average_precision_score``) including ties, but only numpy is needed.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def _validate_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``labels`` as a flat bool array and ``scores`` as a flat float array."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)

    if labels.shape != scores.shape:
        raise ValueError(
            f"labels and scores must have the same shape, got {labels.shape} and {scores.shape}."
        )
    if labels.size == 0:
        raise ValueError("labels and scores are empty, but at least one sample is required.")

    if labels.dtype != np.bool_:
        invalid = (labels != 0) & (labels != 1)
        if np.any(invalid):
            raise ValueError(
                f"labels must be 0/1 or bool, got value {labels[invalid].flat[0]!r}."
            )
        labels = labels == 1

    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values, but all scores must be finite.")

    return labels.ravel(), scores.ravel()


def _threshold_counts(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count positives above each distinct score, scanning from the highest score down.

    Parameters
    ----------
    labels, scores : ndarray, shape (n_samples,)
        Validated bool labels and finite scores.

    Returns
    -------
    false_positives, true_positives : ndarray of int64, shape (n_distinct,)
        Counts of samples with ``score >= distinct_scores[k]``.
    distinct_scores : ndarray, shape (n_distinct,)
        Distinct scores in decreasing order.
    """
    # One sort of the scores, so this scales to millions of pixels. Tied
    # scores are grouped below, so an unstable sort is enough.
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    del order

    # Index of the last sample of each run of equal scores.
    group_ends = np.flatnonzero(np.diff(sorted_scores))
    group_ends = np.append(group_ends, sorted_scores.size - 1)

    true_positives = np.cumsum(sorted_labels, dtype=np.int64)[group_ends]
    false_positives = (group_ends + 1) - true_positives
    return false_positives, true_positives, sorted_scores[group_ends]


def _next_lower_thresholds(distinct_scores: np.ndarray) -> np.ndarray:
    """Shift decreasing distinct scores to the thresholds that give the same predictions.

    ``score >= distinct_scores[k]`` equals ``score > thresholds[k]``.
    """
    thresholds = np.empty(distinct_scores.size, dtype=np.float64)
    thresholds[:-1] = distinct_scores[1:]
    thresholds[-1] = -np.inf
    return thresholds


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the receiver operating characteristic over every distinct score.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
        1 or True for anomalous samples.
    scores : array_like of float, shape (n_samples,)
        Anomaly scores, higher for more anomalous samples.

    Returns
    -------
    fpr, tpr : ndarray of float64, shape (n_distinct + 1,)
        False and true positive rates, increasing, starting at (0, 0).
    thresholds : ndarray of float64, shape (n_distinct + 1,)
        Decreasing thresholds. Point ``k`` predicts anomalous where
        ``score > thresholds[k]``. The first threshold is the maximum score and
        the last is ``-inf``.

    Raises
    ------
    ValueError
        If the shapes differ, labels are not binary or scores are not finite.

    Notes
    -----
    No intermediate points are dropped, so ``fpr`` and ``tpr`` equal
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``. When a class
    is missing, its rate is undefined and returned as NaN with a warning.
    """
    labels, scores = _validate_binary(labels, scores)
    return _roc_from_counts(*_threshold_counts(labels, scores))


def _roc_from_counts(
    false_positives: np.ndarray, true_positives: np.ndarray, distinct_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    false_positives = np.concatenate([[0], false_positives])
    true_positives = np.concatenate([[0], true_positives])
    thresholds = np.concatenate([[distinct_scores[0]], _next_lower_thresholds(distinct_scores)])

    n_negatives = false_positives[-1]
    n_positives = true_positives[-1]
    if n_negatives == 0:
        logger.warning("No normal samples in labels, so the false positive rate is undefined (NaN).")
        fpr = np.full(false_positives.shape, np.nan)
    else:
        fpr = false_positives / n_negatives
    if n_positives == 0:
        logger.warning("No anomalous samples in labels, so the true positive rate is undefined (NaN).")
        tpr = np.full(true_positives.shape, np.nan)
    else:
        tpr = true_positives / n_positives

    return fpr, tpr, thresholds


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute the area under the ROC curve.

    Ties are integrated as straight segments (trapezoids) over the distinct
    scores, the same as ``sklearn.metrics.roc_auc_score``.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)

    Returns
    -------
    float
        AUROC in [0, 1], or NaN with a warning when only one class is present.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    return _area_under_roc(fpr, tpr)


def _area_under_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        return float("nan")
    return _trapezoid(fpr, tpr)


def precision_recall_curve(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute precision and recall over every distinct score.

    The order follows ``sklearn.metrics.precision_recall_curve`` (1.9):
    thresholds increase, and a final point with precision 1 and recall 0
    has no threshold.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)

    Returns
    -------
    precision, recall : ndarray of float64, shape (n_distinct + 1,)
        Recall decreases to 0.
    thresholds : ndarray of float64, shape (n_distinct,)
        Point ``k`` predicts anomalous where ``score > thresholds[k]``. The
        first threshold is ``-inf``, where every sample is predicted anomalous.

    Raises
    ------
    ValueError
        If the shapes differ, labels are not binary or scores are not finite.

    Notes
    -----
    Without anomalous samples, recall is undefined and returned as NaN with a
    warning.
    """
    labels, scores = _validate_binary(labels, scores)
    return _precision_recall_from_counts(*_threshold_counts(labels, scores))


def _precision_recall_from_counts(
    false_positives: np.ndarray, true_positives: np.ndarray, distinct_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Every point predicts at least one sample anomalous, so this never divides by zero.
    precision = true_positives / (true_positives + false_positives)
    n_positives = true_positives[-1]
    if n_positives == 0:
        logger.warning("No anomalous samples in labels, so recall is undefined (NaN).")
        recall = np.full(true_positives.shape, np.nan)
    else:
        recall = true_positives / n_positives

    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]])
    thresholds = _next_lower_thresholds(distinct_scores)[::-1].copy()
    return precision, recall, thresholds


def aupr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Compute the area under the precision-recall curve as average precision.

    Average precision is the step-wise sum ``sum_k (R_k - R_{k-1}) * P_k``
    over decreasing thresholds, not a trapezoid, and equals
    ``sklearn.metrics.average_precision_score``.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)

    Returns
    -------
    float
        Average precision in [0, 1], or NaN with a warning when there are no
        anomalous samples.
    """
    precision, recall, _ = precision_recall_curve(labels, scores)
    return _average_precision(precision, recall)


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    if np.isnan(recall[0]):
        return float("nan")
    # Recall decreases along the arrays, so the steps -diff(recall) are non-negative.
    return float(np.sum(-np.diff(recall) * precision[:-1]))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Find the best F1 score over all thresholds.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)

    Returns
    -------
    f1 : float
        The maximum F1, or NaN with a warning when there are no anomalous samples.
    threshold : float
        A threshold that reproduces ``f1`` with the rule ``score > threshold``.
        It is the next distinct score below the lowest score predicted
        anomalous, or ``-inf`` when every sample is predicted anomalous. Among
        equal F1 values the highest threshold wins. NaN when ``f1`` is NaN.
    """
    labels, scores = _validate_binary(labels, scores)
    false_positives, true_positives, distinct_scores = _threshold_counts(labels, scores)

    n_positives = true_positives[-1]
    if n_positives == 0:
        logger.warning("No anomalous samples in labels, so F1 is undefined (NaN).")
        return float("nan"), float("nan")

    # F1 = 2 TP / (2 TP + FP + FN), and FN = n_positives - TP.
    # The denominator is positive because n_positives > 0.
    f1_scores = 2 * true_positives / (true_positives + false_positives + n_positives)
    best = int(np.argmax(f1_scores))
    thresholds = _next_lower_thresholds(distinct_scores)
    return float(f1_scores[best]), float(thresholds[best])


def confusion_counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    """Count the confusion matrix cells for the rule ``score > threshold``.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)
    threshold : float

    Returns
    -------
    dict
        ``tp``, ``fp``, ``tn`` and ``fn`` as Python ints.
    """
    labels, scores = _validate_binary(labels, scores)
    predicted = scores > threshold

    true_positives = int(np.count_nonzero(predicted & labels))
    false_positives = int(np.count_nonzero(predicted & ~labels))
    false_negatives = int(np.count_nonzero(~predicted & labels))
    true_negatives = labels.size - true_positives - false_positives - false_negatives
    return {"tp": true_positives, "fp": false_positives, "tn": true_negatives, "fn": false_negatives}


def _f1_from_counts(counts: dict[str, int]) -> float:
    denominator = 2 * counts["tp"] + counts["fp"] + counts["fn"]
    if denominator == 0:
        logger.warning(
            "F1 is undefined (NaN) because there are no anomalous samples and none is predicted."
        )
        return float("nan")
    return 2 * counts["tp"] / denominator


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Compute F1 for the rule ``score > threshold``.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_samples,)
    scores : array_like of float, shape (n_samples,)
    threshold : float

    Returns
    -------
    float
        F1 in [0, 1], or NaN with a warning when there are no anomalous
        samples and none is predicted anomalous.
    """
    return _f1_from_counts(confusion_counts(labels, scores, threshold))


def image_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float | None = None
) -> dict[str, float | int]:
    """Compute the image-level metrics of a test set.

    Parameters
    ----------
    labels : array_like of bool or {0, 1}, shape (n_images,)
        1 or True for anomalous images.
    scores : array_like of float, shape (n_images,)
        Image anomaly scores.
    threshold : float, optional
        The calibrated threshold, fitted without the test set. An image is
        anomalous when ``score > threshold``.

    Returns
    -------
    dict
        ``image_auroc``, ``image_aupr``, ``image_f1_max`` and
        ``image_f1_max_threshold``. With a threshold, also ``image_f1`` and the
        counts ``tp``, ``fp``, ``tn`` and ``fn``. Values that one class alone
        cannot define are NaN, and a warning is logged.
    """
    best_f1, best_threshold = f1_max(labels, scores)
    metrics: dict[str, float | int] = {
        "image_auroc": auroc(labels, scores),
        "image_aupr": aupr(labels, scores),
        "image_f1_max": best_f1,
        "image_f1_max_threshold": best_threshold,
    }

    if threshold is not None:
        counts = confusion_counts(labels, scores, threshold)
        metrics["image_f1"] = _f1_from_counts(counts)
        metrics.update(counts)
    return metrics
