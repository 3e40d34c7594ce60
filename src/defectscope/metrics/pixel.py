"""Pixel-level segmentation metrics over a whole test set.

Every pixel of every image is one sample, so 83 images of 256 x 256 are about
5.4 million samples. The areas are exact because every metric sorts all
pixels instead of binning them. Maps keep their dtype, so float32 maps are
not copied to float64.
"""

from __future__ import annotations

import numpy as np

from defectscope.metrics.aupro import aupro, check_map_shapes
from defectscope.metrics.image import (
    _area_under_roc,
    _average_precision,
    _f1_from_counts,
    _precision_recall_from_counts,
    _roc_from_counts,
    _threshold_counts,
    _validate_binary,
    aupr,
    auroc,
    confusion_counts,
)


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Compute the AUROC over all pixels of all images.

    Parameters
    ----------
    masks : array_like of bool or {0, 1}, shape (n_images, height, width)
        Ground truth, True for defective pixels.
    maps : array_like of float, shape (n_images, height, width)
        Anomaly maps at the mask resolution.

    Returns
    -------
    float
        The exact AUROC, or NaN with a warning when one class is missing.

    Raises
    ------
    ValueError
        If the shapes differ or are not 3-D, masks are not binary or maps
        are not finite.
    """
    masks, maps = check_map_shapes(masks, maps)
    return auroc(masks, maps)


def pixel_aupr(masks: np.ndarray, maps: np.ndarray) -> float:
    """Compute the average precision over all pixels of all images.

    Parameters
    ----------
    masks : array_like of bool or {0, 1}, shape (n_images, height, width)
    maps : array_like of float, shape (n_images, height, width)

    Returns
    -------
    float
        The exact average precision, or NaN with a warning when no pixel is
        defective.

    Raises
    ------
    ValueError
        If the shapes differ or are not 3-D, masks are not binary or maps
        are not finite.
    """
    masks, maps = check_map_shapes(masks, maps)
    return aupr(masks, maps)


def pixel_metrics(
    masks: np.ndarray,
    maps: np.ndarray,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """Compute the pixel-level metrics of a test set.

    Parameters
    ----------
    masks : array_like of bool or {0, 1}, shape (n_images, height, width)
        Ground truth, True for defective pixels. Normal images have empty masks.
    maps : array_like of float, shape (n_images, height, width)
        Anomaly maps at the mask resolution.
    threshold : float, optional
        The calibrated threshold. A pixel is anomalous when ``map > threshold``.
    fpr_limit : float
        Upper false positive rate of the AUPRO integral.

    Returns
    -------
    dict
        ``pixel_auroc``, ``pixel_aupr`` and ``aupro``, plus ``pixel_f1`` when a
        threshold is given. Values that the data cannot define are NaN, and a
        warning is logged.
    """
    masks, maps = check_map_shapes(masks, maps)
    labels, scores = _validate_binary(masks, maps)

    # AUROC and average precision share one sort of all pixels.
    counts = _threshold_counts(labels, scores)
    fpr, tpr, _ = _roc_from_counts(*counts)
    precision, recall, _ = _precision_recall_from_counts(*counts)
    del counts

    metrics = {
        "pixel_auroc": _area_under_roc(fpr, tpr),
        "pixel_aupr": _average_precision(precision, recall),
        "aupro": aupro(masks, maps, fpr_limit=fpr_limit),
    }

    if threshold is not None:
        metrics["pixel_f1"] = _f1_from_counts(confusion_counts(masks, maps, threshold))
    return metrics
