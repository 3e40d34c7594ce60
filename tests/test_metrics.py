"""Tests for defectscope.metrics against scikit-learn and a brute-force AUPRO."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from defectscope.metrics import (
    aupr,
    aupro,
    auroc,
    confusion_counts,
    f1_at,
    f1_max,
    image_metrics,
    label_regions,
    pixel_aupr,
    pixel_auroc,
    pixel_metrics,
    precision_recall_curve,
    pro_curve,
    roc_curve,
)

TOLERANCE = 1e-6
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def make_scores(kind: str, seed: int, n_samples: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Return labels and scores that depend on the labels, with ties of the given kind."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n_samples) < 0.3
    labels[:2] = [True, False]
    noise = rng.normal(size=n_samples)
    if kind == "continuous":
        scores = noise + labels
    elif kind == "heavy_ties":
        scores = np.round(noise + labels).astype(np.float64)
    elif kind == "few_values":
        scores = rng.integers(0, 3, n_samples) + labels.astype(int)
        scores = scores.astype(np.float32)
    elif kind == "constant":
        scores = np.full(n_samples, 0.5)
    else:
        raise ValueError(kind)
    return labels, scores


SCORE_KINDS = ["continuous", "heavy_ties", "few_values", "constant"]
SEEDS = [0, 1, 2]


def make_masks(seed: int) -> np.ndarray:
    """Return 4 masks of 16 x 16 with a few regions each and one empty image."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 16, 16), dtype=bool)
    for image in range(3):
        for _ in range(2):
            top, left = rng.integers(0, 12, size=2)
            height, width = rng.integers(1, 5, size=2)
            masks[image, top : top + height, left : left + width] = True
    # Two pixels that touch only at a corner form one 8-connected region.
    masks[0, 14, 14] = True
    masks[0, 15, 15] = True
    return masks


def make_maps(masks: np.ndarray, seed: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    maps = rng.random(masks.shape) + 0.7 * masks
    if ties:
        maps = np.round(maps * 4) / 4
    return maps


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float) -> float:
    """Compute AUPRO with one pass over the data for every distinct threshold."""
    regions = []
    for image in range(masks.shape[0]):
        labels, n_regions = ndimage.label(masks[image], structure=EIGHT_CONNECTED)
        for region in range(1, n_regions + 1):
            regions.append((image, labels == region))
    normal = ~masks

    thresholds = list(np.unique(maps)[::-1]) + [-np.inf]
    points = [(0.0, 0.0)]
    for threshold in thresholds:
        predicted = maps > threshold
        fpr = np.sum(predicted & normal) / np.sum(normal)
        overlaps = [np.sum(predicted[image] & region) / np.sum(region) for image, region in regions]
        points.append((fpr, np.mean(overlaps)))
    points.sort()

    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


# Curves and areas against scikit-learn.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_roc_curve_matches_sklearn(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    fpr, tpr, _ = roc_curve(labels, scores)
    expected_fpr, expected_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr, atol=TOLERANCE)
    np.testing.assert_allclose(tpr, expected_tpr, atol=TOLERANCE)


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_roc_thresholds_reproduce_rates(kind: str) -> None:
    labels, scores = make_scores(kind, seed=0)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    for point, threshold in enumerate(thresholds):
        predicted = scores > threshold
        assert np.sum(predicted & labels) / labels.sum() == pytest.approx(tpr[point])
        assert np.sum(predicted & ~labels) / (~labels).sum() == pytest.approx(fpr[point])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_auroc_matches_sklearn(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    assert auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOLERANCE)


def test_auroc_accepts_integer_labels() -> None:
    labels, scores = make_scores("heavy_ties", seed=0)
    assert auroc(labels.astype(int), scores) == auroc(labels, scores)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_precision_recall_curve_matches_sklearn(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    expected_precision, expected_recall, expected_thresholds = skm.precision_recall_curve(
        labels, scores
    )
    np.testing.assert_allclose(precision, expected_precision, atol=TOLERANCE)
    np.testing.assert_allclose(recall, expected_recall, atol=TOLERANCE)
    assert thresholds.shape == expected_thresholds.shape


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_precision_recall_thresholds_reproduce_points(kind: str) -> None:
    labels, scores = make_scores(kind, seed=1)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    for point, threshold in enumerate(thresholds):
        predicted = scores > threshold
        true_positives = np.sum(predicted & labels)
        assert true_positives / predicted.sum() == pytest.approx(precision[point])
        assert true_positives / labels.sum() == pytest.approx(recall[point])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_aupr_matches_sklearn(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    expected = skm.average_precision_score(labels, scores)
    assert aupr(labels, scores) == pytest.approx(expected, abs=TOLERANCE)


# F1 and confusion counts.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_f1_max_matches_sklearn(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        expected = np.nanmax(2 * precision * recall / (precision + recall))
    best_f1, _ = f1_max(labels, scores)
    assert best_f1 == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_f1_max_threshold_reproduces_f1(kind: str, seed: int) -> None:
    labels, scores = make_scores(kind, seed)
    best_f1, threshold = f1_max(labels, scores)
    assert skm.f1_score(labels, scores > threshold) == pytest.approx(best_f1, abs=TOLERANCE)


def test_f1_max_threshold_separates_perfect_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.9])
    assert f1_max(labels, scores) == (1.0, 0.2)


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 0.5, 1.0, 3.0])
def test_f1_at_matches_sklearn(threshold: float) -> None:
    labels, scores = make_scores("heavy_ties", seed=0)
    expected = skm.f1_score(labels, scores > threshold, zero_division=0.0)
    assert f1_at(labels, scores, threshold) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("threshold", [-1.0, 0.0, 1.0])
def test_confusion_counts_matches_sklearn(threshold: float) -> None:
    labels, scores = make_scores("heavy_ties", seed=2)
    tn, fp, fn, tp = skm.confusion_matrix(labels, scores > threshold, labels=[0, 1]).ravel()
    assert confusion_counts(labels, scores, threshold) == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def test_confusion_counts_tie_is_normal() -> None:
    counts = confusion_counts(np.array([1, 0]), np.array([0.5, 0.5]), threshold=0.5)
    assert counts == {"tp": 0, "fp": 0, "tn": 1, "fn": 1}


# Degenerate inputs and validation.


def test_auroc_only_normals_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        value = auroc(np.zeros(5, dtype=bool), np.arange(5.0))
    assert np.isnan(value)
    assert "No anomalous samples" in caplog.text


def test_auroc_only_anomalies_is_nan() -> None:
    assert np.isnan(auroc(np.ones(5, dtype=bool), np.arange(5.0)))


def test_aupr_only_normals_is_nan() -> None:
    assert np.isnan(aupr(np.zeros(5, dtype=bool), np.arange(5.0)))


def test_f1_max_only_normals_is_nan() -> None:
    best_f1, threshold = f1_max(np.zeros(5, dtype=bool), np.arange(5.0))
    assert np.isnan(best_f1)
    assert np.isnan(threshold)


def test_f1_at_nothing_to_find_is_nan() -> None:
    assert np.isnan(f1_at(np.zeros(3, dtype=bool), np.arange(3.0), threshold=10.0))


def test_image_metrics_one_class_is_nan() -> None:
    result = image_metrics(np.zeros(4, dtype=bool), np.arange(4.0), threshold=1.5)
    assert np.isnan(result["image_auroc"])
    assert np.isnan(result["image_aupr"])
    assert np.isnan(result["image_f1_max"])
    assert result["fp"] == 2


def test_image_metrics_keys_and_values() -> None:
    labels, scores = make_scores("continuous", seed=0)
    result = image_metrics(labels, scores, threshold=0.5)
    assert set(result) == {
        "image_auroc",
        "image_aupr",
        "image_f1_max",
        "image_f1_max_threshold",
        "image_f1",
        "tp",
        "fp",
        "tn",
        "fn",
    }
    assert result["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert result["image_f1"] == pytest.approx(skm.f1_score(labels, scores > 0.5))


def test_image_metrics_without_threshold_omits_f1() -> None:
    labels, scores = make_scores("continuous", seed=0)
    assert "image_f1" not in image_metrics(labels, scores)


def test_metrics_reject_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_metrics_reject_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="0/1 or bool"):
        auroc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))


def test_metrics_reject_nan_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        auroc(np.array([0, 1]), np.array([0.1, np.nan]))


# Pixel metrics.


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_matches_sklearn(ties: bool) -> None:
    masks = make_masks(seed=0)
    maps = make_maps(masks, seed=0, ties=ties).astype(np.float32)
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_aupr_matches_sklearn(ties: bool) -> None:
    masks = make_masks(seed=1)
    maps = make_maps(masks, seed=1, ties=ties).astype(np.float32)
    expected = skm.average_precision_score(masks.ravel(), maps.ravel())
    assert pixel_aupr(masks, maps) == pytest.approx(expected, abs=TOLERANCE)


def test_pixel_auroc_rejects_2d_input() -> None:
    with pytest.raises(ValueError, match="n_images, height, width"):
        pixel_auroc(np.zeros((4, 4), dtype=bool), np.zeros((4, 4)))


def test_pixel_metrics_matches_separate_calls() -> None:
    masks = make_masks(seed=2)
    maps = make_maps(masks, seed=2, ties=True)
    result = pixel_metrics(masks, maps, threshold=0.8)
    assert result["pixel_auroc"] == pixel_auroc(masks, maps)
    assert result["pixel_aupr"] == pixel_aupr(masks, maps)
    assert result["aupro"] == aupro(masks, maps)
    assert result["pixel_f1"] == pytest.approx(skm.f1_score(masks.ravel(), maps.ravel() > 0.8))


def test_pixel_metrics_without_defects_is_nan() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    maps = np.random.default_rng(0).random(masks.shape)
    result = pixel_metrics(masks, maps)
    assert np.isnan(result["pixel_auroc"])
    assert np.isnan(result["pixel_aupr"])
    assert np.isnan(result["aupro"])


# Connected regions and AUPRO.


@pytest.mark.parametrize("density", [0.1, 0.4, 0.6])
def test_label_regions_matches_scipy(density: float) -> None:
    masks = np.random.default_rng(3).random((3, 32, 32)) < density
    labels, n_regions = label_regions(masks)
    expected_count = 0
    for image in range(masks.shape[0]):
        expected, count = ndimage.label(masks[image], structure=EIGHT_CONNECTED)
        expected_count += count
        # Both labelings number regions by their first pixel, so after an
        # offset per image they must agree exactly.
        offset = labels[image][masks[image]].min() - 1 if count else 0
        shifted = np.where(masks[image], labels[image] - offset, 0)
        np.testing.assert_array_equal(shifted, expected)
    assert n_regions == expected_count


def test_label_regions_splits_images() -> None:
    masks = np.ones((2, 3, 3), dtype=bool)
    labels, n_regions = label_regions(masks)
    assert n_regions == 2
    assert set(np.unique(labels[1])) == {2}


def test_label_regions_empty_masks() -> None:
    labels, n_regions = label_regions(np.zeros((2, 4, 4), dtype=bool))
    assert n_regions == 0
    assert not labels.any()


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_brute_force(seed: int, ties: bool, fpr_limit: float) -> None:
    masks = make_masks(seed)
    maps = make_maps(masks, seed, ties)
    expected = brute_force_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=TOLERANCE)


def test_aupro_float32_matches_brute_force() -> None:
    masks = make_masks(seed=4)
    maps = make_maps(masks, seed=4, ties=False).astype(np.float32)
    expected = brute_force_aupro(masks, maps, 0.3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=TOLERANCE)


def test_aupro_perfect_map_is_one() -> None:
    masks = make_masks(seed=0)
    assert aupro(masks, masks.astype(np.float64)) == pytest.approx(1.0, abs=TOLERANCE)


def test_aupro_inverted_map_is_zero() -> None:
    masks = make_masks(seed=0)
    noise = np.random.default_rng(0).random(masks.shape) * 0.1
    assert aupro(masks, 1.0 - masks + noise) == pytest.approx(0.0, abs=TOLERANCE)


def test_pro_curve_weights_regions_equally() -> None:
    # One large region found and one small region missed give PRO 0.5,
    # however many pixels each region has.
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, :4, :4] = True
    masks[0, 7, 7] = True
    maps = np.zeros(masks.shape)
    maps[0, :4, :4] = 1.0
    fpr, pro, _ = pro_curve(masks, maps)
    assert pro[np.searchsorted(fpr, 0.0, side="right") - 1] == pytest.approx(0.5)


def test_aupro_grid_approximates_exact() -> None:
    masks = make_masks(seed=1)
    maps = make_maps(masks, seed=1, ties=False)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=5000) == pytest.approx(exact, abs=1e-3)


def test_aupro_no_regions_is_nan(caplog: pytest.LogCaptureFixture) -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    with caplog.at_level(logging.WARNING):
        value = aupro(masks, np.random.default_rng(0).random(masks.shape))
    assert np.isnan(value)
    assert "no defect region" in caplog.text


def test_aupro_all_defective_is_nan() -> None:
    masks = np.ones((1, 4, 4), dtype=bool)
    assert np.isnan(aupro(masks, np.random.default_rng(0).random(masks.shape)))


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_aupro_rejects_invalid_fpr_limit(fpr_limit: float) -> None:
    masks = make_masks(seed=0)
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, masks.astype(float), fpr_limit=fpr_limit)


def test_pro_curve_thresholds_reproduce_fpr() -> None:
    masks = make_masks(seed=2)
    maps = make_maps(masks, seed=2, ties=True)
    fpr, _, thresholds = pro_curve(masks, maps)
    for point, threshold in enumerate(thresholds):
        expected = np.sum((maps > threshold) & ~masks) / np.sum(~masks)
        assert fpr[point] == pytest.approx(expected)
