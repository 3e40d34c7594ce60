"""End-to-end PaDiM on MVTec AD bottle: train, calibrate, evaluate, reload."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import BOTTLE, needs_bottle
from defectscope.api import evaluate, load_dataset, predict
from defectscope.training import TrainConfig, train


@pytest.fixture(scope="module")
def bottle_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bottle")
    return train(load_dataset(BOTTLE), output, TrainConfig(), progress=False)


@needs_bottle
def test_bottle_image_auroc(bottle_run):
    assert bottle_run.evaluation.metrics["image_auroc"] >= 0.99


@needs_bottle
def test_bottle_pixel_auroc(bottle_run):
    assert bottle_run.evaluation.metrics["pixel_auroc"] >= 0.975


@needs_bottle
def test_bottle_aupro(bottle_run):
    assert bottle_run.evaluation.metrics["aupro"] >= 0.9


@needs_bottle
def test_threshold_fitted_on_calibration_only(bottle_run):
    with open(bottle_run.files["split"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    calibration = [row for row in rows if row["split"] == "calibration"]
    assert len(calibration) == 21
    assert all("train/good" in row["image"] for row in calibration)
    assert bottle_run.metadata["training"]["n_calibration"] == 21
    assert "calibration" in bottle_run.metadata["threshold_rule"]


@needs_bottle
def test_metrics_json_has_no_nan_tokens(bottle_run):
    text = bottle_run.files["metrics"].read_text()
    assert "NaN" not in text
    assert json.loads(text)["n_images"] == 83


@needs_bottle
def test_reloaded_bundle_reproduces_metrics(bottle_run):
    samples = load_dataset(BOTTLE)
    result = evaluate(bottle_run.bundle_dir, samples, progress=False)
    for key in ("image_auroc", "pixel_auroc", "aupro", "tp", "fp"):
        assert result.metrics[key] == pytest.approx(bottle_run.evaluation.metrics[key], rel=1e-6)


@needs_bottle
def test_weights_hash_in_metadata(bottle_run):
    assert len(bottle_run.metadata["backbone"]["weights_sha256"]) == 64


@needs_bottle
def test_predict_reports_bad_file_and_scores_rest(bottle_run, tmp_path):
    good = sorted((BOTTLE / "test" / "broken_large").glob("*.png"))[:2]
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good[0].read_bytes()[:500])
    predictions = predict(bottle_run.bundle_dir, [good[0], bad, good[1]])
    assert [p.error is None for p in predictions] == [True, False, True]
    assert "truncated.png" in predictions[1].image_path
    assert all(p.is_anomalous for p in (predictions[0], predictions[2]))
    assert np.isfinite(predictions[2].normalized_score)
