"""Numpy pre- and post-processing, the one code path for every backend.

Training-time evaluation (PyTorch) and deployed inference (ONNX Runtime,
OpenVINO) both call these functions, so a bundle scores the same image the
same way whichever backend runs the network. This module imports no torch.

Input contract: images arrive as uint8 (height, width, 3) RGB arrays, as
``defectscope.data.image_io.read_image`` returns them, and are converted to
float exactly once here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


def preprocess(image: np.ndarray, input_size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Resize one image to the model input size and normalize it.

    Parameters
    ----------
    image:
        uint8 array (height, width, 3), RGB.
    input_size:
        (height, width) of the model input.
    mean, std:
        Per-channel statistics on the 0-1 scale.

    Returns
    -------
    float32 array (3, input_height, input_width).

    Raises
    ------
    ValueError
        If the image is not uint8 (height, width, 3).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 RGB image of shape (height, width, 3), got {image.dtype} {image.shape}; "
            "read images with defectscope.data.read_image"
        )
    height, width = input_size
    if image.shape[:2] != (height, width):
        # One resize per image, from its own size (bilinear, antialiased when shrinking).
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    # (x / 255 - mean) / std as one multiply-add per value, written channel-first.
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)[:, None, None]
    offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(np.float32)[:, None, None]
    normalized = np.multiply(image.transpose(2, 0, 1), scale, dtype=np.float32, order="C")
    normalized += offset
    return normalized


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a float anomaly map (height, width) to ``size`` = (height, width), bilinear."""
    if anomaly_map.shape == tuple(size):
        return anomaly_map
    resized = Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask (height, width) to ``size`` = (height, width), nearest neighbour."""
    if mask.shape == tuple(size):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
    return np.asarray(resized) > 0


def image_score(anomaly_map: np.ndarray, reduction: str = "max") -> float:
    """Reduce an anomaly map (height, width) to one image score.

    ``max`` (the default) takes the highest pixel; ``mean`` the average.
    """
    if reduction == "max":
        return float(anomaly_map.max())
    if reduction == "mean":
        return float(anomaly_map.mean())
    raise ValueError(f"invalid score reduction {reduction!r}: expected 'max' or 'mean'")


@dataclass(frozen=True)
class ScoreScale:
    """Decision threshold and the linear map from raw scores to normalized ones.

    ``normalize(x) = clip(0.5 + 0.5 * (x - threshold) / (threshold - low), 0, 1)``,
    so ``low`` (the lowest anomaly-map value seen on calibration images) maps
    to 0, the threshold to 0.5 and ``2 * threshold - low`` to 1. Image scores
    and anomaly maps share the scale, so a pixel above 0.5 is above threshold.
    """

    threshold: float
    low: float

    def normalize(self, values: np.ndarray | float) -> np.ndarray | float:
        """Map raw scores or maps onto [0, 1] with the threshold at 0.5."""
        span = max(self.threshold - self.low, 1e-12)
        normalized = np.clip(0.5 + 0.5 * (np.asarray(values, dtype=np.float64) - self.threshold) / span, 0.0, 1.0)
        return float(normalized) if np.ndim(normalized) == 0 else normalized.astype(np.float32)


@dataclass
class Prediction:
    """The result for one image.

    ``anomaly_map`` and ``pred_mask`` are at the model input size
    (input_height, input_width); ``original_size`` is the image's (height, width) before
    resizing. ``error`` is set, and the other fields left empty, when the
    image could not be read or scored.
    """

    image_path: str
    image_score: float = float("nan")
    normalized_score: float = float("nan")
    is_anomalous: bool | None = None
    anomaly_map: np.ndarray | None = None
    pred_mask: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None


def postprocess(image_path: str, anomaly_map: np.ndarray, scale: ScoreScale | None, reduction: str = "max") -> Prediction:
    """Turn a raw anomaly map (height, width) into a ``Prediction``.

    The label is anomalous when the image score exceeds the threshold; the
    predicted mask contains the pixels whose map value exceeds it.
    """
    score = image_score(anomaly_map, reduction)
    if scale is None:
        return Prediction(image_path, image_score=score, anomaly_map=anomaly_map)
    return Prediction(
        image_path,
        image_score=score,
        normalized_score=float(scale.normalize(score)),
        is_anomalous=bool(score > scale.threshold),
        anomaly_map=anomaly_map,
        pred_mask=anomaly_map > scale.threshold,
    )
