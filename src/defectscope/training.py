"""Training: fit a model on normal images, calibrate its threshold, save a bundle."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectscope.bundle.io import save_bundle
from defectscope.bundle.metadata import FORMAT_VERSION
from defectscope.data.datasets import by_split, split_calibration, write_manifest
from defectscope.data.loader import iter_batches
from defectscope.data.sample import Sample
from defectscope.evaluation import EvaluationResult, evaluate, write_metrics_json, write_scores_csv
from defectscope.features.backbone import DEFAULT_BACKBONE, DEFAULT_OUT_INDICES, Backbone
from defectscope.models.anomaly_model import AnomalyModel
from defectscope.models.factory import build_head
from defectscope.progress import progress_bar
from defectscope.runtime.inferencer import Inferencer
from defectscope.runtime.torch_backend import TorchBackend
from defectscope.scoring.thresholds import fit_threshold

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Options of one training run; all of them are written to the bundle metadata."""

    model: str = "padim"
    backbone: str = DEFAULT_BACKBONE
    out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES
    weights: str | None = None
    input_size: int = 256
    sigma: float = 4.0
    score_reduction: str = "max"
    batch_size: int = 16
    calibration_fraction: float = 0.1
    calibration_min: int = 10
    threshold_quantile: float = 1.0
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Output paths, timings and test metrics of one training run."""

    output_dir: Path
    bundle_dir: Path
    metadata: dict[str, Any]
    fit_seconds: float
    calibration_seconds: float
    evaluation: EvaluationResult | None = None
    files: dict[str, Path] = field(default_factory=dict)


def feature_batches(backbone: Backbone, samples: list[Sample], input_size: tuple[int, int], batch_size: int, description: str, progress: bool) -> Iterator[list[torch.Tensor]]:
    """Yield the backbone's feature maps batch by batch over ``samples``; unreadable images are logged and skipped."""
    paths = [sample.image_path for sample in samples]
    with progress_bar(len(paths), description, progress) as advance:
        for batch in iter_batches(paths, input_size, backbone.mean, backbone.std, batch_size):
            for index, message in batch.errors.items():
                logger.error("skipped training image %s: %s", paths[index], message)
            if batch.images is not None:
                with torch.inference_mode():
                    features = backbone(torch.from_numpy(batch.images))
                yield features
            advance(len(batch.indices) + len(batch.errors))


def train(samples: list[Sample], output_dir: str | Path, config: TrainConfig | None = None, progress: bool = True) -> TrainResult:
    """Fit ``config.model`` on the training normals, calibrate, save a bundle and evaluate.

    Steps: carve a calibration split from the training normals (unless the
    samples already have one) and fit the model on the train split. Then fit
    the threshold on the calibration split and save ``<output_dir>/bundle``.
    When there is a test split, also write ``metrics.json`` and ``scores.csv``.

    Raises
    ------
    ValueError
        If there are too few training images or an option is invalid.
    WeightsNotFoundError
        If the backbone's pretrained weights cannot be found.
    """
    config = config or TrainConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    input_size = (config.input_size, config.input_size)

    samples = split_calibration(samples, fraction=config.calibration_fraction, min_count=config.calibration_min, seed=config.seed)
    train_samples = by_split(samples, "train")
    calibration_samples = by_split(samples, "calibration")
    test_samples = by_split(samples, "test")
    files = {"split": write_manifest(samples, output_dir / "split.csv")}
    logger.info("%d train, %d calibration, %d test images", len(train_samples), len(calibration_samples), len(test_samples))

    backbone = Backbone(config.backbone, config.out_indices)
    weights = backbone.load_pretrained(config.weights)
    head = build_head(config.model, backbone, input_size, dict(config.model_options))
    model = AnomalyModel(backbone, head, input_size, config.sigma).eval()

    started = time.perf_counter()
    batches = feature_batches(backbone, train_samples, input_size, config.batch_size, "Extracting training features", progress)
    head.fit(batches, progress=progress)
    fit_seconds = time.perf_counter() - started

    metadata = _metadata(config, backbone, weights, head, train_samples, calibration_samples)
    started = time.perf_counter()
    inferencer = Inferencer(TorchBackend(model), metadata)
    with progress_bar(len(calibration_samples), "Scoring calibration images", progress) as advance:
        calibration = inferencer.predict([s.image_path for s in calibration_samples], config.batch_size, on_batch=advance)
    scored = [(p, s) for p, s in zip(calibration, calibration_samples) if p.error is None]
    if not scored:
        raise ValueError("no calibration image could be read; check the errors logged above")
    scores = np.array([p.image_score for p, _ in scored])
    labels = np.array([s.label for _, s in scored])
    threshold, rule = fit_threshold(scores, labels, config.threshold_quantile)
    low = float(min(p.anomaly_map.min() for p, _ in scored))
    metadata["normalization"] = {"threshold": threshold, "low": low}
    metadata["threshold_rule"] = rule
    calibration_seconds = time.perf_counter() - started
    logger.info("threshold %.4g (%s)", threshold, rule)

    metadata["training"]["fit_seconds"] = round(fit_seconds, 3)
    bundle_dir = save_bundle(model, metadata, output_dir / "bundle")
    result = TrainResult(output_dir, bundle_dir, metadata, fit_seconds, calibration_seconds, files=files)

    if test_samples:
        inferencer = Inferencer(TorchBackend(model), metadata)
        result.evaluation = evaluate(inferencer, test_samples, config.batch_size, progress)
        result.evaluation.metrics["fit_seconds"] = round(fit_seconds, 3)
        result.evaluation.metrics["calibration_seconds"] = round(calibration_seconds, 3)
        files["metrics"] = write_metrics_json(result.evaluation.metrics, output_dir / "metrics.json")
        files["scores"] = write_scores_csv(result.evaluation, output_dir / "scores.csv")
    return result


def _metadata(config: TrainConfig, backbone: Backbone, weights, head, train_samples, calibration_samples) -> dict[str, Any]:
    import timm

    import defectscope

    options = dict(config.model_options)
    if hasattr(head, "options"):
        options = head.options()
    return {
        "format_version": FORMAT_VERSION,
        "model": config.model,
        "model_options": options,
        "backbone": {
            "name": backbone.model_name,
            "out_indices": list(backbone.out_indices),
            "layers": backbone.layer_names,
            "channels": backbone.channels,
            "strides": backbone.strides,
            "weights_source": weights.source,
            "weights_sha256": weights.sha256,
        },
        "input_size": [config.input_size, config.input_size],
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "sigma": config.sigma,
        "score_reduction": config.score_reduction,
        "preprocessing": (
            "uint8 RGB image (EXIF orientation applied, grayscale/palette/RGBA/16-bit converted) -> one bilinear "
            "resize to input_size -> float32 / 255 -> (x - mean) / std -> CHW"
        ),
        "postprocessing": (
            "anomaly map (input_size) -> image score = map maximum (score_reduction) -> anomalous when score > "
            "normalization.threshold -> normalized = clip(0.5 + 0.5 * (x - threshold) / (threshold - low), 0, 1)"
        ),
        "training": {
            "n_train": len(train_samples),
            "n_calibration": len(calibration_samples),
            "config": {key: value for key, value in asdict(config).items() if key != "model_options"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "versions": {
            "defectscope": defectscope.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
