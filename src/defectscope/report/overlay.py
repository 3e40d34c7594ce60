"""Heat-map overlays: an anomaly map blended over its image, with the predicted-mask contour.

Colour scale: the normalized score (0 to 1, threshold at 0.5) through a
blue-cyan-green-yellow-red colour map, so yellow-to-red marks pixels above
the decision threshold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.scoring.processing import resize_map

# Colour-map anchors: normalized score -> RGB. 0.5 (the threshold) sits between green and yellow.
_ANCHORS = np.array([0.0, 0.25, 0.45, 0.55, 0.75, 1.0])
_COLOURS = np.array([[0, 0, 160], [0, 160, 255], [60, 200, 60], [255, 230, 0], [255, 120, 0], [210, 0, 0]], dtype=np.float32)
CONTOUR_COLOUR = (255, 0, 255)


def colorize(normalized_map: np.ndarray) -> np.ndarray:
    """Map normalized scores (height, width) in [0, 1] to uint8 RGB (height, width, 3)."""
    values = np.clip(normalized_map, 0.0, 1.0)
    channels = [np.interp(values, _ANCHORS, _COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def mask_contour(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Return the boundary pixels of a boolean mask (height, width), ``width`` pixels thick."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def overlay(image: np.ndarray, normalized_map: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map over an image and draw the mask contour.

    ``image`` is uint8 (height, width, 3); ``normalized_map`` and ``mask`` are
    resized to the image size when they differ. Returns uint8 (height, width, 3).
    """
    size = image.shape[:2]
    heat = colorize(resize_map(normalized_map.astype(np.float32), size))
    blended = (image.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).astype(np.uint8)
    if mask is not None:
        if mask.shape != size:
            mask = resize_map(mask.astype(np.float32), size) > 0.5
        blended[mask_contour(mask, width=max(1, min(size) // 200))] = CONTOUR_COLOUR
    return blended


def save_png(array: np.ndarray, path: Path) -> Path:
    """Save a uint8 array as PNG, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
