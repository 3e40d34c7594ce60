"""Scores and anomaly maps of the exported runtimes against PyTorch on every bottle test image.

Relative difference of a map: ``max |a - b| / max |a|`` over the pixels of
one image, with ``a`` the PyTorch map. Of an image score: ``|a - b| / |a|``.
The bound, 1e-4, is the largest such value over all 83 images.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_bottle
from export_helpers import bottle_test_images, has_cflow, trained_bundle
from defectscope.runtime import Inferencer

TOLERANCE = 1e-4
MODELS = ["padim", pytest.param("cflow", marks=pytest.mark.skipif(not has_cflow, reason="models/cflow.py is not in this tree"))]


def _predict_all(bundle, runtime: str, precision: str = "fp32"):
    predictions = Inferencer.load(bundle, runtime, precision).predict(bottle_test_images(), batch_size=8)
    assert all(p.error is None for p in predictions)
    return predictions


@pytest.fixture(scope="module", params=MODELS)
def torch_predictions(request):
    bundle = trained_bundle(request.param)
    return bundle, _predict_all(bundle, "torch")


@needs_bottle
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_exported_maps_match_torch(torch_predictions, runtime):
    bundle, expected = torch_predictions
    actual = _predict_all(bundle, runtime)
    assert len(actual) == len(bottle_test_images()) == 83

    map_errors = [np.abs(a.anomaly_map - e.anomaly_map).max() / np.abs(e.anomaly_map).max() for a, e in zip(actual, expected)]
    score_errors = [abs(a.image_score - e.image_score) / abs(e.image_score) for a, e in zip(actual, expected)]
    flips = sum(a.is_anomalous != e.is_anomalous for a, e in zip(actual, expected))
    assert max(map_errors) <= TOLERANCE
    assert max(score_errors) <= TOLERANCE
    assert flips == 0


@needs_bottle
def test_openvino_fp16_close_to_torch(torch_predictions):
    bundle, expected = torch_predictions
    actual = _predict_all(bundle, "openvino", "fp16")
    score_errors = [abs(a.image_score - e.image_score) / abs(e.image_score) for a, e in zip(actual, expected)]
    # fp16 rounds the weights only (relative error about 5e-4 each); scores move by well under 1 %.
    assert max(score_errors) <= 1e-2
