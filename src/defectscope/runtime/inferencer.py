"""The one inference path: read, preprocess, run a backend, postprocess.

Training-time evaluation and deployment both go through ``Inferencer``; only
the backend that runs the network differs (PyTorch, ONNX Runtime, OpenVINO).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from defectscope.bundle.metadata import read_metadata
from defectscope.data.loader import iter_batches
from defectscope.scoring.processing import Prediction, ScoreScale, postprocess

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "openvino")


class Backend(Protocol):
    """Runs normalized float32 images (batch, 3, height, width) to anomaly maps (batch, height, width)."""

    name: str

    def run(self, images: np.ndarray) -> np.ndarray: ...


def _load_backend(bundle_dir: Path, runtime: str, precision: str) -> Backend:
    if runtime == "torch":
        from defectscope.runtime.torch_backend import TorchBackend

        return TorchBackend.from_bundle(bundle_dir)
    if runtime in ("onnx", "openvino"):
        from defectscope.runtime import exported

        return exported.load_backend(bundle_dir, runtime, precision)
    raise ValueError(f"invalid runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")


def _with_export_threshold(metadata: dict[str, Any], runtime: str, precision: str) -> dict[str, Any]:
    """Use the export's own threshold where it has one (int8 PaDiM, refitted for its backbone)."""
    if runtime != "openvino":
        return metadata
    record = metadata.get("exports", {}).get(f"openvino_{precision}", {})
    if "normalization" not in record:
        return metadata
    return {**metadata, "normalization": record["normalization"], "threshold_rule": record.get("threshold_rule")}


class Inferencer:
    """Predicts image scores, labels and anomaly maps with a trained bundle.

    Examples
    --------
    >>> inferencer = Inferencer.load("runs/bottle/bundle")          # doctest: +SKIP
    >>> [p.image_score for p in inferencer.predict(["part.png"])]   # doctest: +SKIP
    """

    def __init__(self, backend: Backend, metadata: dict[str, Any]) -> None:
        self.backend = backend
        self.metadata = metadata
        self.input_size: tuple[int, int] = tuple(metadata["input_size"])
        self.mean = tuple(metadata["mean"])
        self.std = tuple(metadata["std"])
        self.reduction = metadata.get("score_reduction", "max")
        scale = metadata.get("normalization")
        self.scale = ScoreScale(scale["threshold"], scale["low"]) if scale else None

    @classmethod
    def load(cls, bundle_dir: str | Path, runtime: str = "torch", precision: str = "fp32") -> "Inferencer":
        """Load a bundle for ``runtime`` (``torch``, ``onnx`` or ``openvino``).

        Raises ``BundleError`` for a missing or incomplete bundle, and
        ``ValueError`` for an unknown runtime.
        """
        bundle_dir = Path(bundle_dir)
        metadata = read_metadata(bundle_dir)
        return cls(_load_backend(bundle_dir, runtime, precision), _with_export_threshold(metadata, runtime, precision))

    @property
    def threshold(self) -> float | None:
        """Decision threshold on raw image scores, or None for an uncalibrated model."""
        return None if self.scale is None else self.scale.threshold

    def predict(
        self,
        images: Sequence[str | Path | np.ndarray],
        batch_size: int = 16,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Prediction]:
        """Score images given as file paths or uint8 RGB arrays (height, width, 3).

        Returns one ``Prediction`` per input, in order. A file that cannot be
        read gets a ``Prediction`` whose ``error`` names the file and the
        problem; the other images are still scored. ``on_batch(n)`` is called
        after each batch with the number of inputs it covered.
        """
        results: list[Prediction | None] = [None] * len(images)
        for batch in iter_batches(images, self.input_size, self.mean, self.std, batch_size):
            for index, message in batch.errors.items():
                logger.error("skipped %s: %s", _describe(images[index], index), message)
                results[index] = Prediction(_describe(images[index], index), error=message)
            if batch.images is not None:
                maps = self.backend.run(batch.images)
                for row, index in enumerate(batch.indices):
                    prediction = postprocess(_describe(images[index], index), maps[row], self.scale, self.reduction)
                    prediction.original_size = batch.original_sizes[row]
                    results[index] = prediction
            if on_batch is not None:
                on_batch(len(batch.indices) + len(batch.errors))
        return results  # type: ignore[return-value]


def _describe(item: str | Path | np.ndarray, index: int) -> str:
    return f"<array {index}>" if isinstance(item, np.ndarray) else str(item)
