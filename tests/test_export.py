"""Export to ONNX and OpenVINO, and the torch-free runtime that loads the exports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import BOTTLE, needs_bottle
from export_helpers import bottle_test_images, has_cflow, has_nncf, trained_bundle
from defectscope.bundle.export import export_bundle, parse_formats
from defectscope.bundle.metadata import BundleError
from defectscope.cli import app
from defectscope.metrics import auroc
from defectscope.runtime import Inferencer

pytestmark = needs_bottle


@pytest.fixture(scope="module")
def bundle():
    return trained_bundle("padim")


@pytest.fixture
def bundle_copy(bundle, tmp_path):
    """A private copy of the bundle and its split.csv, for tests that change it."""
    shutil.copy(bundle.parent / "split.csv", tmp_path / "split.csv")
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_export_records_files_with_hashes(bundle):
    exports = json.loads((bundle / "metadata.json").read_text())["exports"]
    assert set(exports) == {"onnx", "openvino_fp32", "openvino_fp16"}
    for record in exports.values():
        for name, info in record["files"].items():
            assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == info["sha256"]
            assert (bundle / name).stat().st_size == info["bytes"]


def test_export_keeps_other_metadata(bundle):
    metadata = json.loads((bundle / "metadata.json").read_text())
    assert "normalization" in metadata
    assert "preprocessing" in metadata
    assert "postprocessing" in metadata


def test_export_leaves_no_staging_folder(bundle):
    assert not [path for path in bundle.iterdir() if path.name.startswith(".")]


def test_export_rejects_invalid_options(bundle):
    with pytest.raises(ValueError, match="invalid export format"):
        parse_formats("tflite")
    with pytest.raises(ValueError, match="invalid precision"):
        export_bundle(bundle, "openvino", ["int4"])


def test_runtime_without_export_names_command(bundle_copy):
    for name in ("model.onnx", "model.xml", "model.bin"):
        (bundle_copy / name).unlink()
    metadata = json.loads((bundle_copy / "metadata.json").read_text())
    del metadata["exports"]
    (bundle_copy / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="defectscope export .* --format onnx"):
        Inferencer.load(bundle_copy, "onnx")
    with pytest.raises(BundleError, match="defectscope export .* --format openvino"):
        Inferencer.load(bundle_copy, "openvino")


def test_runtime_detects_truncated_export(bundle_copy):
    with open(bundle_copy / "model.onnx", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(BundleError, match="incomplete"):
        Inferencer.load(bundle_copy, "onnx")


def test_onnx_rejects_fp16(bundle):
    with pytest.raises(ValueError, match="invalid precision 'fp16' for runtime onnx"):
        Inferencer.load(bundle, "onnx", "fp16")


def test_openvino_leaves_working_directory_clean(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Inferencer.load(bundle, "openvino").predict(bottle_test_images()[:2])
    assert list(tmp_path.iterdir()) == []


def test_any_size_and_mode_same_scores(bundle, tmp_path):
    source = np.asarray(Image.open(bottle_test_images()[0]).convert("RGB"))
    gray = tmp_path / "gray.jpg"
    Image.fromarray(source).convert("L").resize((1024, 768)).save(gray, quality=95)
    small = tmp_path / "small.png"
    Image.fromarray(source).resize((256, 256)).save(small)

    results = {runtime: Inferencer.load(bundle, runtime).predict([gray, small]) for runtime in ("torch", "onnx", "openvino")}
    for runtime in ("onnx", "openvino"):
        for actual, expected in zip(results[runtime], results["torch"]):
            assert actual.error is None
            assert actual.original_size == expected.original_size
            assert abs(actual.image_score - expected.image_score) <= 1e-4 * abs(expected.image_score)
    assert results["torch"][0].original_size == (768, 1024)
    assert results["torch"][1].original_size == (256, 256)


TORCH_FREE_SCRIPT = """
import sys
from defectscope.runtime import Inferencer
for runtime in ("onnx", "openvino"):
    predictions = Inferencer.load(sys.argv[1], runtime).predict(sys.argv[2:])
    assert all(p.error is None for p in predictions), predictions
    print(runtime, [round(p.image_score, 3) for p in predictions])
assert "torch" not in sys.modules, "torch was imported"
assert "openvino.tools.ovc.telemetry_utils" not in sys.modules or \
    sys.modules["openvino.tools.ovc.telemetry_utils"].tm.__name__.endswith("telemetry_stub")
"""


def test_runtime_imports_no_torch_and_sends_no_telemetry(bundle, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    images = [str(path) for path in bottle_test_images()[:2]]
    environment = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    environment.pop("CI", None)
    completed = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_SCRIPT, str(bundle), *images],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "onnx" in completed.stdout
    # openvino_telemetry writes ~/intel, ONNX Runtime ~/.cache/Microsoft, when they run.
    assert list(home.iterdir()) == []


@pytest.mark.skipif(not has_nncf, reason="nncf is not installed (pip install 'defectscope[export]')")
def test_int8_export_from_split_without_telemetry(bundle_copy, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    script = "import sys; from defectscope.bundle.export import export_bundle; export_bundle(sys.argv[1], 'openvino', ['int8'])"
    environment = {**os.environ, "HOME": str(home)}
    environment.pop("CI", None)
    completed = subprocess.run([sys.executable, "-c", script, str(bundle_copy)], env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert list(home.iterdir()) == []

    metadata = json.loads((bundle_copy / "metadata.json").read_text())
    record = metadata["exports"]["openvino_int8"]
    assert record["calibration_images"] == 10
    assert record["head_refit_images"] == 20
    assert record["normalization"]["threshold"] != metadata["normalization"]["threshold"]

    # A quantizer on the map output would round it to 256 levels and clip strong defects.
    import openvino

    model = openvino.Core().read_model(str(bundle_copy / "model_int8.xml"))
    quantizers = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantizers
    for quantizer in quantizers:
        consumers = [target.get_node().get_friendly_name() for target in quantizer.output(0).get_target_inputs()]
        assert any(name.startswith("/backbone/") for name in consumers), quantizer.get_friendly_name()
    assert model.output(0).get_node().input_value(0).get_node().get_type_name() != "FakeQuantize"

    # PaDiM's Gaussians refitted on int8 features keep the fp32 model's ranking (without the
    # refit every image scored as anomalous and image AUROC fell to 0.50).
    images = bottle_test_images()
    labels = np.array([path.parent.name != "good" for path in images])
    int8 = Inferencer.load(bundle_copy, "openvino", "int8")
    assert int8.threshold == record["normalization"]["threshold"]
    int8_scores = np.array([p.image_score for p in int8.predict(images)])
    fp32_scores = np.array([p.image_score for p in Inferencer.load(bundle_copy, "openvino", "fp32").predict(images)])
    assert auroc(labels, int8_scores) >= auroc(labels, fp32_scores) - 0.05


@pytest.mark.parametrize("given_calibration", [False, True])
def test_int8_without_split_names_fix(bundle, tmp_path, given_calibration):
    # Without split.csv next to the bundle int8 has no training images, calibration images given or not.
    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    calibration = bottle_test_images()[:2] if given_calibration else None
    with pytest.raises(ValueError, match="split.csv") as error:
        export_bundle(copy, "openvino", ["int8"], calibration_images=calibration)
    assert "keep the run folder" in str(error.value)
    assert not (copy / "model_int8.xml").exists()


@pytest.mark.skipif(not (has_nncf and has_cflow), reason="needs nncf and the CFLOW model")
def test_int8_cflow_retrains_flows(tmp_path):
    source = trained_bundle("cflow")
    shutil.copy(source.parent / "split.csv", tmp_path / "split.csv")
    bundle = Path(shutil.copytree(source, tmp_path / "bundle"))
    export_bundle(bundle, "openvino", ["int8"])

    record = json.loads((bundle / "metadata.json").read_text())["exports"]["openvino_int8"]
    assert record["head_refit_images"] == 20
    images = bottle_test_images()
    labels = np.array([path.parent.name != "good" for path in images])
    int8_scores = np.array([p.image_score for p in Inferencer.load(bundle, "openvino", "int8").predict(images)])
    fp32_scores = np.array([p.image_score for p in Inferencer.load(bundle, "openvino", "fp32").predict(images)])
    assert auroc(labels, int8_scores) >= auroc(labels, fp32_scores) - 0.05


def test_cli_export_then_predict_openvino(bundle_copy, tmp_path):
    runner = CliRunner()
    exported = runner.invoke(app, ["export", str(bundle_copy), "--format", "onnx", "-q"])
    assert exported.exit_code == 0, exported.output
    assert "onnx:" in exported.output

    images = [str(path) for path in bottle_test_images()[:3]]
    predicted = runner.invoke(app, ["predict", str(bundle_copy), *images, "--runtime", "openvino", "-o", str(tmp_path / "out"), "--no-overlays", "-q"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(rows) == 3
    assert all(row["error"] == "" for row in rows)


def test_cli_evaluate_with_onnx_runtime(bundle, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(bundle), str(BOTTLE), "--runtime", "onnx", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["runtime"] == "onnx"
    assert metrics["n_scored"] == 83
