"""Evaluation of a bundle on labelled test images, through the inference path."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.image_io import ImageReadError, read_mask
from defectscope.data.sample import ANOMALOUS, Sample
from defectscope.metrics import image_metrics, pixel_metrics
from defectscope.progress import progress_bar
from defectscope.runtime.inferencer import Inferencer
from defectscope.scoring.processing import Prediction, resize_mask

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Metrics and per-image predictions of one evaluation run.

    ``maps`` is float32 (n_scored, height, width) at the model input size;
    its rows follow ``scored``, the samples that were read and scored.
    ``masks`` is bool (n_masks, height, width), or None without ground-truth
    masks, and ``mask_rows[k]`` is the row of ``maps`` that ``masks[k]``
    belongs to: anomalous images without a mask have no row in ``masks``.
    ``metadata`` is the bundle metadata the inferencer scored with, including
    the threshold of the export it ran (int8 has its own).
    """

    metrics: dict[str, Any]
    samples: list[Sample]
    predictions: list[Prediction]
    scored: list[int] = field(default_factory=list)
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    mask_rows: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def evaluate(inferencer: Inferencer, samples: list[Sample], batch_size: int = 16, progress: bool = True) -> EvaluationResult:
    """Score ``samples`` with ``inferencer`` and compute image and pixel metrics.

    Image metrics use every sample that could be read. Pixel metrics use
    normal images (all-background masks) and anomalous images that have a
    mask; anomalous images without one are left out of pixel metrics. A
    sample that fails to read is reported in ``metrics["errors"]`` and
    skipped.

    Raises ``ValueError`` when ``samples`` is empty.
    """
    if not samples:
        raise ValueError("no test images to evaluate: the dataset has an empty test split")
    started = time.perf_counter()
    with progress_bar(len(samples), "Scoring test images", progress) as advance:
        predictions = inferencer.predict([s.image_path for s in samples], batch_size, on_batch=advance)
    seconds = time.perf_counter() - started

    scored = [i for i, p in enumerate(predictions) if p.error is None]
    errors = {str(samples[i].image_path): predictions[i].error for i in range(len(samples)) if predictions[i].error}
    labels = np.array([samples[i].label for i in scored])
    scores = np.array([predictions[i].image_score for i in scored])
    maps = np.stack([predictions[i].anomaly_map for i in scored]) if scored else None

    metrics: dict[str, Any] = {"n_images": len(samples), "n_scored": len(scored), "n_anomalous": int(labels.sum())}
    metrics.update(image_metrics(labels, scores, inferencer.threshold))
    masks, pixel_rows = _read_masks(samples, predictions, scored, inferencer.input_size, errors)
    if masks is not None and maps is not None and masks.any():
        metrics.update(pixel_metrics(masks, maps[pixel_rows], inferencer.threshold))
    else:
        logger.info("no ground-truth masks: pixel metrics skipped")
    metrics["seconds"] = round(seconds, 3)
    metrics["ms_per_image"] = round(1000 * seconds / len(samples), 2)
    metrics["errors"] = errors
    return EvaluationResult(metrics, samples, predictions, scored, maps, masks, pixel_rows, inferencer.metadata)


def _read_masks(samples, predictions, scored, input_size, errors) -> tuple[np.ndarray | None, list[int]]:
    """Read masks at the model input size for the rows that enter pixel metrics."""
    if not any(samples[i].mask_path for i in scored):
        return None, []
    masks, rows = [], []
    for row, index in enumerate(scored):
        sample = samples[index]
        if sample.mask_path is None:
            if sample.label == ANOMALOUS:
                continue
            masks.append(np.zeros(input_size, dtype=bool))
        else:
            try:
                mask = read_mask(sample.mask_path, expected_size=predictions[index].original_size)
            except ImageReadError as error:
                errors[str(sample.mask_path)] = str(error)
                logger.error("skipped mask %s: %s", sample.mask_path, error)
                continue
            masks.append(resize_mask(mask, input_size))
        rows.append(row)
    return (np.stack(masks) if masks else None), rows


def write_scores_csv(result: EvaluationResult, path: Path) -> Path:
    """Write one row per image: path, label, defect type, scores, prediction, error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label", "defect_type", "image_score", "normalized_score", "predicted_anomalous", "error"])
        for sample, prediction in zip(result.samples, result.predictions):
            writer.writerow([
                sample.image_path, sample.label, sample.defect_type,
                "" if prediction.error else f"{prediction.image_score:.6g}",
                "" if prediction.error or prediction.is_anomalous is None else f"{prediction.normalized_score:.6g}",
                "" if prediction.is_anomalous is None else int(prediction.is_anomalous),
                prediction.error or "",
            ])
    return path


def write_metrics_json(metrics: dict[str, Any], path: Path) -> Path:
    """Write metrics as JSON, turning NaN into null."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(metrics, default=float).replace("NaN", "null"))
    path.write_text(json.dumps(clean, indent=2) + "\n", encoding="utf-8")
    return path
