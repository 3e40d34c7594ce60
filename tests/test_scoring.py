"""Tests for the shared pre/post-processing and threshold fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.scoring.processing import ScoreScale, postprocess, preprocess, resize_mask
from defectscope.scoring.smoothing import MapSmoother, gaussian_kernel, gaussian_kernel_size
from defectscope.scoring.thresholds import fit_threshold


def test_preprocess_shape_and_normalization():
    image = np.full((30, 40, 3), 255, dtype=np.uint8)
    tensor = preprocess(image, (16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tensor.shape == (3, 16, 16)
    assert tensor.dtype == np.float32
    assert np.allclose(tensor, 1.0)


def test_preprocess_matches_per_channel_formula():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor = preprocess(image, (16, 16), mean, std)
    expected = ((image / 255.0 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    assert tensor.flags["C_CONTIGUOUS"]
    assert np.abs(tensor - expected).max() < 1e-6


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)])
def test_preprocess_rejects_wrong_input(bad):
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess(bad, (8, 8), (0.5,) * 3, (0.5,) * 3)


def test_score_scale_maps_threshold_to_half():
    scale = ScoreScale(threshold=10.0, low=2.0)
    assert scale.normalize(10.0) == pytest.approx(0.5)
    assert scale.normalize(2.0) == pytest.approx(0.0)
    assert scale.normalize(18.0) == pytest.approx(1.0)
    assert scale.normalize(100.0) == pytest.approx(1.0)


def test_postprocess_label_agrees_with_mask():
    anomaly_map = np.zeros((8, 8), np.float32)
    anomaly_map[2, 3] = 5.0
    scale = ScoreScale(threshold=4.0, low=0.0)
    prediction = postprocess("part.png", anomaly_map, scale)
    assert prediction.is_anomalous
    assert prediction.image_score == 5.0
    assert prediction.pred_mask.sum() == 1
    assert prediction.normalized_score > 0.5


def test_resize_mask_stays_binary():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    resized = resize_mask(mask, (20, 20))
    assert resized.dtype == bool
    assert resized.sum() == 36


def _reference_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (batch, 1, height, width) maps by separable convolution with reflect padding, in float64."""
    if sigma <= 0:
        return maps
    kernel = torch.from_numpy(gaussian_kernel(sigma)).float().double()
    pad = kernel.numel() // 2
    maps = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(maps, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))


def test_smoother_preserves_constant_map():
    maps = torch.full((1, 10, 10), 3.0)
    assert torch.allclose(MapSmoother((40, 40), 4.0)(maps), torch.full((1, 40, 40), 3.0), atol=1e-5)


def test_kernel_size_for_sigma_four():
    assert gaussian_kernel_size(4.0) == 33


def test_smoother_output_size():
    smoother = MapSmoother((64, 48), sigma=2.0)
    assert smoother(torch.rand(2, 16, 12)).shape == (2, 64, 48)


@pytest.mark.parametrize(("map_size", "input_size", "sigma"), [((64, 64), (256, 256), 4.0), ((15, 20), (60, 83), 2.5), ((32, 32), (32, 32), 0.0)])
def test_smoother_equals_interpolate_then_blur(map_size, input_size, sigma):
    # The per-axis operators must reproduce the two-step reference: bilinear upsampling, then the blur.
    maps = torch.rand(3, *map_size, generator=torch.Generator().manual_seed(0)).double() * 10
    upsampled = F.interpolate(maps.unsqueeze(1), size=input_size, mode="bilinear", align_corners=False)
    expected = _reference_blur(upsampled, sigma).squeeze(1)
    actual = MapSmoother(input_size, sigma).double()(maps)
    assert actual.shape == (3, *input_size)
    assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-10)


def test_threshold_default_is_calibration_max():
    threshold, rule = fit_threshold(np.array([1.0, 3.0, 2.0]))
    assert threshold == 3.0
    assert "quantile 1" in rule


def test_threshold_uses_f1_with_labelled_calibration():
    scores = np.array([1.0, 2.0, 3.0, 8.0, 9.0])
    labels = np.array([0, 0, 0, 1, 1])
    threshold, rule = fit_threshold(scores, labels)
    assert 3.0 <= threshold < 8.0
    assert "F1" in rule


def test_threshold_rejects_empty_scores():
    with pytest.raises(ValueError, match="empty"):
        fit_threshold(np.array([]))
