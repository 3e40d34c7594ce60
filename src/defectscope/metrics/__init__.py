"""Image and pixel metrics for anomaly detection, in numpy only.

Every thresholded metric predicts anomalous where ``score > threshold``.
"""

from defectscope.metrics.aupro import aupro, label_regions, pro_curve
from defectscope.metrics.image import (
    aupr,
    auroc,
    confusion_counts,
    f1_at,
    f1_max,
    image_metrics,
    precision_recall_curve,
    roc_curve,
)
from defectscope.metrics.pixel import pixel_aupr, pixel_auroc, pixel_metrics

__all__ = [
    "aupr",
    "aupro",
    "auroc",
    "confusion_counts",
    "f1_at",
    "f1_max",
    "image_metrics",
    "label_regions",
    "pixel_aupr",
    "pixel_auroc",
    "pixel_metrics",
    "precision_recall_curve",
    "pro_curve",
    "roc_curve",
]
