"""Tests of the report package: panels, SVG charts, report content, run-folder reports and the benchmark tables."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data.datasets import read_mvtec, write_manifest
from defectscope.evaluation import evaluate
from defectscope.report import benchmark
from defectscope.report.html import ReportOptions, render_report, write_report
from defectscope.report.overlay import colorize
from defectscope.report.panels import classification_panel, colour_bar, segmentation_panel, tile_shape
from defectscope.report.plots import Series, curve_svg, histogram_svg, subsample_curve
from defectscope.report.run_folder import find_bundle, report_run
from defectscope.report.summary import defect_type_summaries, galleries, scored_images
from defectscope.runtime.inferencer import Inferencer
from defectscope.training import TrainConfig, train

SHARED_DATA = Path(os.environ.get("DEFECTSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
needs_bottle = pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"MVTec AD bottle not found at {BOTTLE}")
runner = CliRunner()


def tiny_samples():
    """12 bottle training normals and 3 test images of each defect type (and good)."""
    samples = read_mvtec(BOTTLE)
    training = [s for s in samples if s.split == "train"][:12]
    test = []
    for defect_type in ("good", "broken_large", "broken_small", "contamination"):
        test += [s for s in samples if s.split == "test" and s.defect_type == defect_type][:3]
    return training + test


def train_tiny(output_dir: Path):
    """Train PaDiM at 64 x 64 on ``tiny_samples``: a run folder in a few seconds."""
    config = TrainConfig(input_size=64, calibration_min=3, calibration_fraction=0.25, batch_size=8, model_options={"n_features": 20})
    return train(tiny_samples(), output_dir, config, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not BOTTLE.is_dir():
        pytest.skip(f"MVTec AD bottle not found at {BOTTLE}")
    os.environ.setdefault("DEFECTSCOPE_OFFLINE", "1")
    return train_tiny(tmp_path_factory.mktemp("report") / "run")


@pytest.fixture(scope="module")
def tiny_report(tiny_run, tmp_path_factory):
    return write_report(tiny_run.evaluation, tiny_run.metadata, tmp_path_factory.mktemp("html") / "nested" / "report.html", source="tiny bottle")


@pytest.fixture(scope="module")
def tiny_html(tiny_report):
    return tiny_report.read_text(encoding="utf-8")


def decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))


# --- panels -------------------------------------------------------------------


def test_tile_shape_keeps_aspect_ratio():
    assert tile_shape((512, 512, 3), 160) == (160, 160)
    assert tile_shape((100, 400, 3), 160) == (40, 160)
    assert tile_shape((620, 110), 160) == (160, 28)


def test_segmentation_panel_has_five_tiles():
    image = np.full((90, 120, 3), 128, dtype=np.uint8)
    normalized = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    truth = np.zeros((64, 64), dtype=bool)
    truth[20:30, 20:30] = True

    with_truth = segmentation_panel(image, normalized, normalized > 0.5, truth, "caption", True, tile_size=80)
    without_truth = segmentation_panel(image, normalized, normalized > 0.5, None, "caption", False, tile_size=80)

    assert with_truth.dtype == np.uint8
    assert with_truth.shape[2] == 3
    tile_width = tile_shape(image.shape, 80)[1]
    assert with_truth.shape[1] - without_truth.shape[1] == tile_width + 4
    assert with_truth.shape[1] == 5 * tile_width + 6 * 4


def test_segmentation_panel_heat_map_uses_colour_scale():
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    normalized = np.full((64, 64), 0.9, dtype=np.float32)
    panel = segmentation_panel(image, normalized, normalized > 0.5, None, "", None, tile_size=64)
    # The heat-map tile is the second tile: gap 4, image tile 64, gap 4.
    title_height = 11 + 6
    heat_pixel = panel[title_height + 32, 4 + 64 + 4 + 32]
    assert tuple(heat_pixel) == tuple(colorize(np.array([[0.9]], dtype=np.float32))[0, 0])


def test_classification_panel_is_rgb():
    image = np.full((50, 50, 3), 200, dtype=np.uint8)
    panel = classification_panel(image, np.zeros((32, 32), dtype=np.float32), 0.2, False, "normal part", tile_size=100)
    assert panel.dtype == np.uint8
    assert panel.shape[2] == 3
    assert panel.shape[1] == 4 * 100 + 5 * 4


def test_colour_bar_spans_the_colour_map():
    bar = colour_bar(width=200, height=10)
    ramp = colorize(np.linspace(0.0, 1.0, 200, dtype=np.float32)[None, :])[0]
    # The ramp starts 12 pixels in, and its columns 2 and 197 sit just inside the tick marks at 0 and 1.
    assert tuple(bar[5, 12 + 2]) == tuple(ramp[2])
    assert tuple(bar[5, 12 + 197]) == tuple(ramp[197])
    assert tuple(ramp[0]) == tuple(colorize(np.array([[0.0]], dtype=np.float32))[0, 0])


# --- SVG charts -------------------------------------------------------------


def test_subsample_curve_keeps_endpoints():
    x = np.linspace(0, 1, 10_000)
    small_x, small_y = subsample_curve(x, x**2, max_points=50)
    assert len(small_x) <= 50
    assert small_x[0] == 0.0
    assert small_x[-1] == 1.0
    assert small_y[-1] == 1.0


def test_curve_svg_is_valid_xml():
    svg = curve_svg([Series(np.array([0, 0.2, 1.0]), np.array([0, 0.9, 1.0]), "ROC <test>")], "ROC & more", "fpr", "tpr", diagonal=True)
    root = ElementTree.fromstring(svg)
    namespace = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{namespace}svg"
    assert len(root.findall(f".//{namespace}polyline")) == 1
    assert "ROC &lt;test&gt;" in svg


def test_curve_svg_drops_nan_points():
    svg = curve_svg([Series(np.array([0, np.nan, 1.0]), np.array([0, 0.5, 1.0]), "curve")], "t", "x", "y")
    points = ElementTree.fromstring(svg).find(".//{http://www.w3.org/2000/svg}polyline").get("points")
    assert len(points.split()) == 2


def test_histogram_svg_draws_threshold_line():
    svg = histogram_svg(np.array([1.0, 1.2, 1.4]), np.array([2.0, 2.5, 3.0]), 1.7, "scores", "raw score")
    root = ElementTree.fromstring(svg)
    dashed = [line for line in root.iter("{http://www.w3.org/2000/svg}line") if line.get("stroke-dasharray") == "6 3"]
    assert len(dashed) == 1


def test_histogram_svg_counts_outliers_in_last_bin():
    normal = np.linspace(0, 1, 50)
    anomalous = np.concatenate([np.linspace(1, 2, 49), [1000.0]])
    svg = histogram_svg(normal, anomalous, 1.0, "scores", "raw score")
    assert "last bin: all above" in svg
    root = ElementTree.fromstring(svg)
    ticks = [float(text.text) for text in root.iter("{http://www.w3.org/2000/svg}text") if re.fullmatch(r"-?[\d.]+", text.text or "")]
    assert max(ticks) < 1000


# --- report content -------------------------------------------------------------


@needs_bottle
def test_mask_rows_follow_scored_rows(tiny_run, tmp_path):
    # An anomalous image without a mask gets no mask row, but the rows after it must still point at their own maps.
    samples = [s for s in tiny_samples() if s.split == "test"]
    dropped = next(i for i, s in enumerate(samples) if s.label == 1)
    samples[dropped] = replace(samples[dropped], mask_path=None)
    evaluation = evaluate(Inferencer.load(tiny_run.bundle_dir), samples, progress=False)

    assert dropped not in evaluation.mask_rows
    assert len(evaluation.mask_rows) == len(samples) - 1
    assert len(evaluation.masks) == len(evaluation.mask_rows)
    images = scored_images(evaluation)
    assert images[dropped].mask_row is None
    assert all(images[row].mask_row == index for index, row in enumerate(evaluation.mask_rows))


@needs_bottle
def test_defect_type_summaries_count_images(tiny_run):
    summaries = {s.defect_type: s for s in defect_type_summaries(scored_images(tiny_run.evaluation))}
    assert set(summaries) == {"good", "broken_large", "broken_small", "contamination"}
    assert all(summary.count == 3 for summary in summaries.values())
    assert summaries["good"].flagged == tiny_run.evaluation.metrics["fp"]


@needs_bottle
def test_galleries_pick_by_label_and_score(tiny_run):
    images = scored_images(tiny_run.evaluation)
    threshold = tiny_run.metadata["normalization"]["threshold"]
    false_negatives, false_positives, best = galleries(images, tiny_run.evaluation, threshold, size=2)

    assert len(false_negatives.images) == 2
    assert all(image.sample.label == 1 for image in false_negatives.images)
    assert false_negatives.images[0].prediction.image_score <= false_negatives.images[1].prediction.image_score
    assert all(image.sample.label == 0 for image in false_positives.images)
    assert false_positives.images[0].prediction.image_score >= false_positives.images[1].prediction.image_score
    assert all(image.prediction.is_anomalous for image in best.images)


@needs_bottle
def test_report_is_self_contained(tiny_html):
    assert "<script" not in tiny_html
    assert "<link" not in tiny_html
    assert "Content-Security-Policy" in tiny_html
    urls = set(re.findall(r"https?://[^\s\"'<>]+", tiny_html))
    assert urls == {"http://www.w3.org/2000/svg"}


@needs_bottle
def test_report_images_are_png(tiny_html):
    sources = re.findall(r'<img src="([^"]+)"', tiny_html)
    # Colour bar plus three galleries of up to 6 panels.
    assert len(sources) >= 4
    for source in sources:
        image = decode_data_uri(source)
        assert image.format == "PNG"
        assert image.width > 0


@needs_bottle
def test_report_has_every_section(tiny_html):
    for heading in ("Dataset and model", "Metrics", "Confusion counts at the calibrated threshold", "Curves", "Score histograms", "Per defect type", "Worst false negatives", "Worst false positives", "Best detections"):
        assert heading in tiny_html, heading
    for chart in ("Image ROC", "Image precision-recall", "Pixel ROC", "Pixel precision-recall"):
        assert f">{chart}</text>" in tiny_html, chart
    assert "drawn with at most 400 evenly spaced points" in tiny_html


@needs_bottle
def test_report_shows_calibrated_counts(tiny_run, tiny_html):
    metrics = tiny_run.evaluation.metrics
    row = re.search(r"<tr><th>anomalous</th><td[^>]*>(\d+)</td><td[^>]*>(\d+)</td></tr>", tiny_html)
    assert row is not None
    assert (int(row.group(1)), int(row.group(2))) == (metrics["tp"], metrics["fn"])


@needs_bottle
def test_report_without_masks_uses_classification_panels(tiny_run):
    evaluation = tiny_run.evaluation
    no_masks = replace(evaluation, masks=None, mask_rows=[])
    html = render_report(no_masks, tiny_run.metadata, options=ReportOptions(gallery_size=2))
    assert "Pixel curves need ground-truth masks" in html
    assert "predicted mask" not in html
    assert "ground truth" not in html.split("<h2>Galleries</h2>")[1]


@needs_bottle
def test_report_rejects_uncalibrated_bundle(tiny_run):
    metadata = {key: value for key, value in tiny_run.metadata.items() if key != "normalization"}
    with pytest.raises(ValueError, match="normalization"):
        render_report(tiny_run.evaluation, metadata)


@needs_bottle
def test_write_report_stays_small(tiny_report):
    assert tiny_report.stat().st_size < 15_000_000


# --- run folders and CLI --------------------------------------------------------


def test_report_run_without_split_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="split.csv"):
        report_run(tmp_path, progress=False)


@needs_bottle
def test_cli_report_matches_training_metrics(tiny_run):
    result = runner.invoke(app, ["report", str(tiny_run.output_dir), "--quiet", "--gallery-size", "2"])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output

    # The report re-scores the test images, so its metrics must equal the ones training stored.
    html = (tiny_run.output_dir / "report.html").read_text(encoding="utf-8")
    stored = json.loads((tiny_run.output_dir / "metrics.json").read_text())
    assert f"{stored['image_auroc']:.4f}" in html
    assert f"{stored['aupro']:.4f}" in html
    assert f"{stored['fit_seconds']:.4f}" in html


def test_cli_report_missing_folder_fails_cleanly(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "missing"), "--quiet"])
    assert result.exit_code == 2
    assert "split.csv" in result.output


@needs_bottle
def test_cli_evaluate_writes_report_and_split(tiny_run, tmp_path):
    manifest = write_manifest(tiny_samples(), tmp_path / "tiny.csv")
    output = tmp_path / "evaluation"
    result = runner.invoke(app, ["evaluate", str(tiny_run.bundle_dir), str(manifest), "--output", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (output / "report.html").is_file()
    assert (output / "split.csv").is_file()
    assert json.loads((output / "metrics.json").read_text())["bundle"] == str(tiny_run.bundle_dir.resolve())

    # The evaluate folder is a run folder too: `report` finds the bundle through metrics.json.
    assert find_bundle(output, json.loads((output / "metrics.json").read_text())) == tiny_run.bundle_dir.resolve()


# --- benchmark -------------------------------------------------------------------


def test_parse_dataset_forms():
    assert benchmark.parse_dataset("bottle=/data/mvtec_ad/bottle") == benchmark.DatasetSpec("bottle", "/data/mvtec_ad/bottle")
    assert benchmark.parse_dataset("/data/magnetic_tile/split.csv") == benchmark.DatasetSpec("magnetic_tile", "/data/magnetic_tile/split.csv")
    assert benchmark.parse_dataset("/data/visa/split_csv/1cls.csv#candle") == benchmark.DatasetSpec("visa-candle", "/data/visa/split_csv/1cls.csv", "candle")
    assert benchmark.parse_dataset("elpv").name == "elpv"


def test_parse_dataset_rejects_empty_spec():
    with pytest.raises(ValueError, match="NAME"):
        benchmark.parse_dataset("bottle=")


def test_read_references_rejects_bad_value(tmp_path):
    path = tmp_path / "references.csv"
    path.write_text("model,dataset,metric,value\npadim,bottle,image_auroc,high\n")
    with pytest.raises(ValueError, match="line 2"):
        benchmark.read_references(path)


def test_table_rows_add_reference_columns(tmp_path):
    path = tmp_path / "references.csv"
    path.write_text("model,dataset,metric,value\npadim,bottle,image_auroc,0.994\n")
    references = benchmark.read_references(path)
    run = benchmark.BenchmarkRun("padim", "bottle", tmp_path, 0, 12.3, 456.7, {"image_auroc": 0.99, "aupro": 0.9, "fit_seconds": 80.2})
    header, rows = benchmark.table_rows([run], references)

    assert header.index("image AUROC (reference)") == header.index("image AUROC") + 1
    row = dict(zip(header, rows[0]))
    assert row["image AUROC (reference)"] == "0.994"
    assert row["peak RSS MB"] == "456.7"
    assert row["pixel AUROC"] == ""
    assert row["status"] == "ok"


def test_write_tables_markdown_and_csv(tmp_path):
    runs = [benchmark.BenchmarkRun("padim", "bottle", tmp_path, 0, 1.0, 2.0, {"image_auroc": 1.0})]
    markdown, table = benchmark.write_tables(runs, tmp_path, note="note")
    lines = markdown.read_text().splitlines()
    assert lines[0] == "note"
    assert lines[2].startswith("| model | dataset | image AUROC")
    assert table.read_text().splitlines()[1].startswith("padim,bottle,1.000")


def test_run_one_records_failure(tmp_path):
    # An option that typer rejects makes the child exit before it imports torch, so this test stays fast.
    spec = benchmark.DatasetSpec("missing", str(tmp_path / "no-such-dataset"))
    run = benchmark.run_one("padim", spec, tmp_path / "run", ["--input-size", "large"])
    assert run.returncode == 2
    assert "exit code 2" in run.error
    assert (tmp_path / "run" / "train.log").is_file()
    assert run.peak_rss_mb > 0


@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS units checked on Linux")
def test_peak_rss_is_megabytes():
    assert benchmark._peak_rss_mb(2048) == 2.0
