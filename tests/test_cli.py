"""Tests for the defectscope command on small real-image folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import BOTTLE, needs_bottle
from defectscope.cli import app

runner = CliRunner()


def _link_images(sources: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for source in sources:
        (folder / source.name).symlink_to(source)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    normal = _link_images(sorted((BOTTLE / "train" / "good").glob("*.png"))[:24], root / "good")
    abnormal = _link_images(sorted((BOTTLE / "test" / "broken_large").glob("*.png"))[:4], root / "defect")
    masks = _link_images(sorted((BOTTLE / "ground_truth" / "broken_large").glob("*.png"))[:4], root / "masks")
    test_normal = _link_images(sorted((BOTTLE / "test" / "good").glob("*.png"))[:4], root / "test_good")
    return {"root": root, "normal": normal, "abnormal": abnormal, "masks": masks, "test_normal": test_normal}


@pytest.fixture(scope="module")
def trained(folders):
    output = folders["root"] / "run"
    result = runner.invoke(app, [
        "train", "--normal-dir", str(folders["normal"]), "--abnormal-dir", str(folders["abnormal"]),
        "--mask-dir", str(folders["masks"]), "--test-normal-dir", str(folders["test_normal"]),
        "--input-size", "96", "--n-features", "40", "--sigma", "2", "-o", str(output), "-q",
    ])
    assert result.exit_code == 0, result.output
    return output, result.output


@needs_bottle
def test_train_prints_output_locations(trained):
    output, printed = trained
    assert str(output / "bundle") in printed.replace("\n", "")
    assert (output / "metrics.json").is_file()
    assert (output / "scores.csv").is_file()


@needs_bottle
def test_evaluate_writes_metrics(trained, tmp_path, folders):
    output, _ = trained
    result = runner.invoke(app, [
        "evaluate", str(output / "bundle"), "--normal-dir", str(folders["normal"]),
        "--abnormal-dir", str(folders["abnormal"]), "--mask-dir", str(folders["masks"]),
        "--test-normal-dir", str(folders["test_normal"]), "-o", str(tmp_path / "eval"), "-q",
    ])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 8
    assert metrics["pixel_auroc"] > 0.5


@needs_bottle
def test_predict_folder_with_bad_file(trained, tmp_path, folders):
    output, _ = trained
    images = tmp_path / "incoming"
    images.mkdir()
    for source in sorted(folders["abnormal"].iterdir())[:2]:
        (images / source.name).write_bytes(source.read_bytes())
    (images / "zz_corrupt.png").write_bytes(b"not an image at all")

    result = runner.invoke(app, ["predict", str(output / "bundle"), str(images), "-o", str(tmp_path / "pred"), "-q"])

    assert result.exit_code == 0, result.output
    with open(tmp_path / "pred" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert [bool(row["error"]) for row in rows] == [False, False, True]
    assert "zz_corrupt.png" in rows[2]["error"]
    assert all(Path(row["overlay"]).is_file() for row in rows[:2])
    assert "1 failed" in result.output


@needs_bottle
def test_predict_missing_bundle_fails_cleanly(tmp_path, folders):
    result = runner.invoke(app, ["predict", str(tmp_path / "no_bundle"), str(folders["test_normal"])])
    assert result.exit_code == 2
    assert "bundle not found" in result.output


def test_train_unknown_dataset_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing_dataset"), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2
    assert "dataset not found" in result.output


@needs_bottle
def test_train_with_validation_folders(folders, tmp_path):
    validation_normal = _link_images(sorted((BOTTLE / "train" / "good").glob("*.png"))[30:36], tmp_path / "val_good")
    validation_defect = _link_images(sorted((BOTTLE / "test" / "broken_small").glob("*.png"))[:3], tmp_path / "val_defect")
    output = tmp_path / "run"

    result = runner.invoke(app, [
        "train", "--normal-dir", str(folders["normal"]), "--validation-dir", str(validation_normal),
        "--validation-abnormal-dir", str(validation_defect), "--input-size", "96", "--n-features", "40",
        "--sigma", "2", "--no-report", "-o", str(output), "-q",
    ])

    assert result.exit_code == 0, result.output
    metadata = json.loads((output / "bundle" / "metadata.json").read_text())
    assert metadata["training"]["n_calibration"] == 9
    assert metadata["training"]["n_train"] == 24
    assert "F1" in metadata["threshold_rule"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["--covariance-block", "0"], "--covariance-block"),
    (["--model", "cflow", "--covariance-block", "4"], "PaDiM only"),
])
def test_train_rejects_bad_covariance_block(folders, tmp_path, arguments, message):
    result = runner.invoke(app, ["train", "--normal-dir", str(folders["normal"]), "-o", str(tmp_path / "run"), "-q", *arguments])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "run").exists()
