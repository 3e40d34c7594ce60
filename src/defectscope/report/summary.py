"""Report content computed from an evaluation: curves, per-defect counts and gallery picks.

Everything here works on an ``EvaluationResult`` and the calibrated
threshold, and returns plain numbers and row indices for ``html`` to draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from defectscope.data.sample import ANOMALOUS, NORMAL, Sample
from defectscope.evaluation import EvaluationResult
from defectscope.metrics import precision_recall_curve, roc_curve
from defectscope.scoring.processing import Prediction


@dataclass
class ScoredImage:
    """One scored test image: its row in ``EvaluationResult.maps`` and its mask row, if any."""

    row: int
    sample: Sample
    prediction: Prediction
    mask_row: int | None = None


@dataclass
class DefectTypeSummary:
    """Counts and mean scores of one defect type (``good`` for normal images)."""

    defect_type: str
    label: int
    count: int
    flagged: int
    mean_score: float
    mean_normalized_score: float

    @property
    def flagged_rate(self) -> float:
        """Share of images predicted anomalous: the detection rate, or the false positive rate for ``good``."""
        return self.flagged / self.count if self.count else float("nan")


@dataclass
class Gallery:
    """A titled list of images to show as panels, with a note on how they were chosen."""

    title: str
    note: str
    images: list[ScoredImage] = field(default_factory=list)


@dataclass
class Curve:
    """Points of a ROC or precision-recall curve, and how many points the exact curve had before subsampling."""

    x: np.ndarray
    y: np.ndarray
    n_points: int


def scored_images(evaluation: EvaluationResult) -> list[ScoredImage]:
    """List the images that were read and scored, in the order of ``evaluation.maps``.

    Raises ``ValueError`` when the predictions carry no label, which happens
    for a bundle without a calibrated threshold.
    """
    mask_row_of = {row: index for index, row in enumerate(evaluation.mask_rows)}
    images = []
    for row, sample_index in enumerate(evaluation.scored):
        prediction = evaluation.predictions[sample_index]
        if prediction.is_anomalous is None:
            raise ValueError(f"{prediction.image_path} has no predicted label: the bundle has no calibrated threshold. Retrain it with `defectscope train`.")
        images.append(ScoredImage(row, evaluation.samples[sample_index], prediction, mask_row_of.get(row)))
    return images


def defect_type_summaries(images: list[ScoredImage]) -> list[DefectTypeSummary]:
    """Count images and predicted anomalies per defect type, normal images (``good``) first."""
    groups: dict[tuple[int, str], list[ScoredImage]] = {}
    for image in images:
        groups.setdefault((image.sample.label, image.sample.defect_type), []).append(image)

    summaries = []
    for (label, defect_type), members in sorted(groups.items()):
        summaries.append(
            DefectTypeSummary(
                defect_type=defect_type,
                label=label,
                count=len(members),
                flagged=sum(bool(m.prediction.is_anomalous) for m in members),
                mean_score=float(np.mean([m.prediction.image_score for m in members])),
                mean_normalized_score=float(np.mean([m.prediction.normalized_score for m in members])),
            )
        )
    return summaries


def image_curves(images: list[ScoredImage]) -> tuple[Curve, Curve] | None:
    """Compute the image-level ROC (fpr, tpr) and precision-recall (recall, precision) curves.

    Returns None when the test images are all of one class.
    """
    labels = np.array([image.sample.label for image in images])
    scores = np.array([image.prediction.image_score for image in images])
    if labels.size == 0 or labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return Curve(fpr, tpr, len(fpr)), Curve(recall, precision, len(recall))


def pixel_curves(evaluation: EvaluationResult, max_points: int) -> tuple[Curve, Curve] | None:
    """Compute the pixel-level ROC and precision-recall curves over every pixel, then keep ``max_points`` points of each.

    The curves are exact before subsampling (one point per distinct map
    value). Returns None without masks, or when no pixel or every pixel is
    defective.
    """
    from defectscope.report.plots import subsample_curve

    if evaluation.masks is None or evaluation.maps is None or not evaluation.mask_rows:
        return None
    masks = evaluation.masks
    if not masks.any() or masks.all():
        return None
    maps = evaluation.maps[evaluation.mask_rows]

    fpr, tpr, _ = roc_curve(masks.ravel(), maps.ravel())
    roc = Curve(*subsample_curve(fpr, tpr, max_points), len(fpr))
    del fpr, tpr
    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    pr = Curve(*subsample_curve(recall, precision, max_points), len(recall))
    return roc, pr


def _overlap(image: ScoredImage, evaluation: EvaluationResult, threshold: float) -> float:
    """Return the intersection over union of the predicted and ground-truth masks, or NaN without a mask."""
    if image.mask_row is None or evaluation.masks is None or evaluation.maps is None:
        return float("nan")
    truth = evaluation.masks[image.mask_row]
    predicted = evaluation.maps[image.row] > threshold
    union = np.count_nonzero(truth | predicted)
    return np.count_nonzero(truth & predicted) / union if union else float("nan")


def galleries(images: list[ScoredImage], evaluation: EvaluationResult, threshold: float, size: int) -> list[Gallery]:
    """Pick the worst false negatives, the worst false positives and the best detections, ``size`` of each.

    - False negatives: anomalous images predicted normal, lowest score first.
      Without any, the lowest-scoring anomalous images (closest to a miss).
    - False positives: normal images predicted anomalous, highest score first.
      Without any, the highest-scoring normal images (closest to a false alarm).
    - Best detections: anomalous images predicted anomalous, by the overlap
      (IoU) of predicted and ground-truth masks when masks exist, else by score.
    """
    anomalous = [image for image in images if image.sample.label == ANOMALOUS]
    normal = [image for image in images if image.sample.label == NORMAL]
    by_score = lambda image: image.prediction.image_score  # noqa: E731

    missed = sorted((image for image in anomalous if not image.prediction.is_anomalous), key=by_score)
    if missed:
        false_negatives = Gallery("Worst false negatives", f"{len(missed)} anomalous images scored below the threshold; lowest score first.", missed[:size])
    else:
        false_negatives = Gallery("Worst false negatives", "No anomalous image was missed. Shown instead: the lowest-scoring anomalous images, closest to a miss.", sorted(anomalous, key=by_score)[:size])

    alarms = sorted((image for image in normal if image.prediction.is_anomalous), key=by_score, reverse=True)
    if alarms:
        false_positives = Gallery("Worst false positives", f"{len(alarms)} normal images scored above the threshold; highest score first.", alarms[:size])
    else:
        false_positives = Gallery("Worst false positives", "No normal image was flagged. Shown instead: the highest-scoring normal images, closest to a false alarm.", sorted(normal, key=by_score, reverse=True)[:size])

    detected = [image for image in anomalous if image.prediction.is_anomalous]
    if any(image.mask_row is not None for image in detected):
        overlaps = {image.row: _overlap(image, evaluation, threshold) for image in detected}
        ranked = sorted(detected, key=lambda image: -np.nan_to_num(overlaps[image.row], nan=-1.0))
        note = "Detected anomalous images with the largest overlap (IoU) between predicted and ground-truth masks."
    else:
        ranked = sorted(detected, key=by_score, reverse=True)
        note = "Detected anomalous images with the highest scores."
    best = Gallery("Best detections", note if detected else "No anomalous image was detected.", ranked[:size])
    return [false_negatives, false_positives, best]
