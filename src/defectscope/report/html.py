"""The per-run HTML report: one self-contained file that opens from disk with no server.

Images are inlined as base64 PNG and charts as SVG, and the page carries its
own CSS and no scripts. A Content-Security-Policy meta tag blocks every
network request, so the report shows the same offline as online.
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from defectscope.data.image_io import ImageReadError, read_image
from defectscope.evaluation import EvaluationResult
from defectscope.report.panels import classification_panel, colour_bar, segmentation_panel
from defectscope.report.plots import Series, curve_svg, histogram_svg, subsample_curve
from defectscope.report.summary import Gallery, ScoredImage, defect_type_summaries, galleries, image_curves, pixel_curves, scored_images
from defectscope.scoring.processing import ScoreScale

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f1f3f5; text-align: left; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.panel { margin: 6px 0; } .note { color: #555; font-size: 13px; }
"""


@dataclass
class ReportOptions:
    """Size limits of a report: panels per gallery, panel tile size in pixels, points per pixel-level curve."""

    gallery_size: int = 6
    tile_size: int = 160
    max_curve_points: int = 400


def _png_data_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.4f}"
    return escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="number">{_format(cell)}</td>' if isinstance(cell, (int, float)) and not isinstance(cell, bool) else f"<td>{_format(cell)}</td>"
            for cell in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _summary_section(evaluation: EvaluationResult, metadata: dict[str, Any], images: list[ScoredImage], source: str) -> str:
    """Describe the dataset (test images per class, masks, unreadable files) and the model (from the bundle metadata)."""
    categories = sorted({image.sample.category for image in images if image.sample.category}) or ["(none)"]
    n_anomalous = sum(image.sample.label for image in images)
    n_masks = len(evaluation.mask_rows)
    dataset_rows = [
        ["categories", ", ".join(categories)],
        ["test images", evaluation.metrics.get("n_images", len(evaluation.samples))],
        ["scored", len(images)],
        ["normal / anomalous", f"{len(images) - n_anomalous} / {n_anomalous}"],
        ["images with a ground-truth mask (normals count as empty masks)", n_masks],
        ["files that could not be read", len(evaluation.metrics.get("errors") or {})],
        ["source", source],
    ]

    backbone = metadata.get("backbone", {})
    training = metadata.get("training", {})
    normalization = metadata.get("normalization", {})
    versions = metadata.get("versions", {})
    model_rows = [
        ["model", metadata.get("model")],
        ["model options", ", ".join(f"{k}={v}" for k, v in (metadata.get("model_options") or {}).items()) or "none"],
        ["backbone", f"{backbone.get('name')} layers {', '.join(backbone.get('layers', []))}"],
        ["backbone weights", f"{backbone.get('weights_source')} (sha256 {str(backbone.get('weights_sha256'))[:12]}...)"],
        ["input size", " x ".join(str(v) for v in metadata.get("input_size", []))],
        ["blur sigma, score reduction", f"{metadata.get('sigma')}, {metadata.get('score_reduction')}"],
        ["threshold (raw score)", normalization.get("threshold")],
        ["threshold rule", metadata.get("threshold_rule")],
        ["training / calibration images", f"{training.get('n_train')} / {training.get('n_calibration')}"],
        ["created", training.get("created")],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items())],
    ]
    return (
        '<h2>Dataset and model</h2><div class="row">'
        f"<div><h3>Test data</h3>{_table(['item', 'value'], dataset_rows)}</div>"
        f"<div><h3>Model (bundle metadata.json)</h3>{_table(['item', 'value'], model_rows)}</div></div>"
    )


_IMAGE_METRICS = [("image_auroc", "AUROC"), ("image_aupr", "AUPR (average precision)"), ("image_f1", "F1 at the calibrated threshold"), ("image_f1_max", "best F1 over all thresholds (uses test labels)")]
_PIXEL_METRICS = [("pixel_auroc", "AUROC"), ("pixel_aupr", "AUPR (average precision)"), ("aupro", "AUPRO (FPR up to 0.3)"), ("pixel_f1", "F1 at the calibrated threshold")]
_TIMING = [("fit_seconds", "training (fit) seconds"), ("calibration_seconds", "calibration seconds"), ("seconds", "test scoring seconds"), ("ms_per_image", "milliseconds per test image")]


def _metrics_section(metrics: dict[str, Any]) -> str:
    """Tabulate image metrics, pixel metrics, timings and the confusion counts at the calibrated threshold."""
    image_rows = [[label, metrics.get(key)] for key, label in _IMAGE_METRICS]
    pixel_rows = [[label, metrics.get(key)] for key, label in _PIXEL_METRICS if key in metrics]
    timing_rows = [[label, metrics.get(key)] for key, label in _TIMING if key in metrics]
    pixel = _table(["pixel metric", "value"], pixel_rows) if pixel_rows else '<p class="note">No ground-truth masks: pixel metrics not computed.</p>'

    counts = [metrics.get(key) for key in ("tp", "fn", "fp", "tn")]
    confusion = (
        "<table><tr><th></th><th>predicted anomalous</th><th>predicted normal</th></tr>"
        f'<tr><th>anomalous</th><td class="number">{_format(counts[0])}</td><td class="number">{_format(counts[1])}</td></tr>'
        f'<tr><th>normal</th><td class="number">{_format(counts[2])}</td><td class="number">{_format(counts[3])}</td></tr></table>'
    )
    return (
        '<h2>Metrics</h2><div class="row">'
        f"<div>{_table(['image metric', 'value'], image_rows)}</div><div>{pixel}</div>"
        f"<div><h3>Confusion counts at the calibrated threshold</h3>{confusion}</div>"
        f"<div>{_table(['timing', 'value'], timing_rows)}</div></div>"
    )


def _curves_section(evaluation: EvaluationResult, images: list[ScoredImage], threshold: float, options: ReportOptions) -> str:
    """Draw ROC and precision-recall curves (image and pixel) and the score histograms."""
    charts = []
    notes = []
    curves = image_curves(images)
    if curves is None:
        notes.append("Image curves need both normal and anomalous test images.")
    else:
        roc, pr = curves
        charts.append(curve_svg([Series(*subsample_curve(roc.x, roc.y, options.max_curve_points), "image ROC")], "Image ROC", "false positive rate", "true positive rate", diagonal=True))
        charts.append(curve_svg([Series(*subsample_curve(pr.x, pr.y, options.max_curve_points), "image PR")], "Image precision-recall", "recall", "precision", legend_corner="bottom-right"))

    pixels = pixel_curves(evaluation, options.max_curve_points)
    if pixels is None:
        notes.append("Pixel curves need ground-truth masks with both defective and good pixels.")
    else:
        roc, pr = pixels
        charts.append(curve_svg([Series(roc.x, roc.y, "pixel ROC")], "Pixel ROC", "false positive rate", "true positive rate", diagonal=True))
        charts.append(curve_svg([Series(pr.x, pr.y, "pixel PR")], "Pixel precision-recall", "recall", "precision"))
        notes.append(
            f"Pixel curves are computed exactly over every pixel of the {len(evaluation.mask_rows)} masked test images "
            f"at the model input size ({roc.n_points} ROC points), then drawn with at most {options.max_curve_points} evenly spaced points."
        )

    normal = [image.prediction.image_score for image in images if image.sample.label == 0]
    anomalous = [image.prediction.image_score for image in images if image.sample.label == 1]
    histogram = histogram_svg(np.array(normal), np.array(anomalous), threshold, "Image scores", "raw image score")
    notes_html = "".join(f'<p class="note">{escape(note)}</p>' for note in notes)
    return (
        f'<h2>Curves</h2><div class="row">{"".join(charts)}</div>{notes_html}'
        f'<h2>Score histograms</h2><div class="row">{histogram}</div>'
        '<p class="note">Raw image scores of normal and anomalous test images; an image is predicted anomalous when its score is above the threshold.</p>'
    )


def _defect_section(images: list[ScoredImage]) -> str:
    rows = []
    for summary in defect_type_summaries(images):
        kind = "normal" if summary.label == 0 else "anomalous"
        rows.append([summary.defect_type, kind, summary.count, summary.flagged, summary.flagged_rate, summary.mean_score, summary.mean_normalized_score])
    header = ["defect type", "class", "images", "predicted anomalous", "share predicted anomalous", "mean raw score", "mean normalized score"]
    return (
        f"<h2>Per defect type</h2>{_table(header, rows)}"
        '<p class="note">For anomalous types the share predicted anomalous is the detection rate; for normal images it is the false positive rate.</p>'
    )


def _panel(image: ScoredImage, evaluation: EvaluationResult, scale: ScoreScale, segmentation: bool, tile_size: int) -> str:
    """Draw one image's panel as an inline PNG, or a note when its file cannot be read any more."""
    try:
        picture = read_image(image.sample.image_path)
    except ImageReadError as error:
        logger.error("panel skipped for %s: %s", image.sample.image_path, error)
        return f'<p class="note">{escape(str(image.sample.image_path))}: {escape(str(error))}</p>'

    prediction = image.prediction
    raw_map = evaluation.maps[image.row]
    normalized_map = scale.normalize(raw_map)
    truth = "anomalous" if image.sample.label == 1 else "normal"
    verdict = "anomalous" if prediction.is_anomalous else "normal"
    caption = (
        f"{Path(image.sample.image_path).name} | {image.sample.defect_type} | normalized score {prediction.normalized_score:.3f} "
        f"(raw {prediction.image_score:.4g}) | predicted {verdict}, truth {truth}"
    )
    if segmentation:
        truth_mask = evaluation.masks[image.mask_row] if image.mask_row is not None and evaluation.masks is not None else None
        array = segmentation_panel(picture, normalized_map, raw_map > scale.threshold, truth_mask, caption, prediction.is_anomalous, tile_size)
    else:
        array = classification_panel(picture, normalized_map, prediction.normalized_score, bool(prediction.is_anomalous), caption, tile_size)
    return f'<div class="panel"><img src="{_png_data_uri(array)}" alt="{escape(caption)}" title="{escape(str(image.sample.image_path))}"></div>'


def _gallery_section(chosen: list[Gallery], evaluation: EvaluationResult, scale: ScoreScale, options: ReportOptions) -> str:
    segmentation = bool(evaluation.mask_rows)
    legend = (
        f'<p><img src="{_png_data_uri(colour_bar())}" alt="heat-map colour scale"></p>'
        '<p class="note">Heat maps show the normalized score: 0 is the lowest calibration value, 0.5 the decision threshold '
        "(between green and yellow) and 1 twice the threshold's distance from that low; yellow to red pixels are above the threshold. "
        + ("Overlays draw the predicted mask's contour in magenta and the ground truth's in white. " if segmentation else "")
        + "Captions are red for a predicted anomaly and green for a predicted normal.</p>"
    )
    parts = ["<h2>Galleries</h2>", legend]
    for gallery in chosen:
        parts.append(f"<h3>{escape(gallery.title)}</h3><p class=\"note\">{escape(gallery.note)}</p>")
        parts.extend(_panel(image, evaluation, scale, segmentation, options.tile_size) for image in gallery.images)
    return "".join(parts)


def _errors_section(metrics: dict[str, Any]) -> str:
    errors = metrics.get("errors") or {}
    if not errors:
        return ""
    rows = [[path, message] for path, message in errors.items()]
    return f"<h2>Files that could not be read</h2>{_table(['file', 'error'], rows)}"


def render_report(evaluation: EvaluationResult, metadata: dict[str, Any], source: str = "", options: ReportOptions | None = None) -> str:
    """Render the HTML report of one evaluation as a string.

    Parameters
    ----------
    evaluation:
        Result of ``defectscope.evaluation.evaluate``, with its maps (and masks, for pixel-level parts).
    metadata:
        The bundle's ``metadata.json`` contents; ``normalization`` gives the threshold and the colour scale.
    source:
        Where the test images came from, shown in the summary (e.g. the run folder's split.csv).

    Raises
    ------
    ValueError
        If the bundle has no calibrated threshold, or nothing was scored.
    """
    options = options or ReportOptions()
    normalization = metadata.get("normalization")
    if not normalization:
        raise ValueError("the bundle metadata has no 'normalization' (threshold): retrain the bundle with `defectscope train`")
    if evaluation.maps is None:
        raise ValueError("no test image was scored, so there is nothing to report. metrics['errors'] lists the files that failed")
    scale = ScoreScale(normalization["threshold"], normalization["low"])
    images = scored_images(evaluation)

    category = ", ".join(sorted({image.sample.category for image in images if image.sample.category}))
    title = f"defectscope report: {metadata.get('model', 'model')}" + (f" on {category}" if category else "")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = [
        _summary_section(evaluation, metadata, images, source),
        _metrics_section(evaluation.metrics),
        _curves_section(evaluation, images, scale.threshold, options),
        _defect_section(images),
        _gallery_section(galleries(images, evaluation, scale.threshold, options.gallery_size), evaluation, scale, options),
        _errors_section(evaluation.metrics),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=\"note\">Generated {created} by defectscope.</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(evaluation: EvaluationResult, metadata: dict[str, Any], path: str | Path, source: str = "", options: ReportOptions | None = None) -> Path:
    """Render the report (see ``render_report``) and write it to ``path``, creating parent folders. Returns the path."""
    path = Path(path)
    html = render_report(evaluation, metadata, source, options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    logger.info("wrote report %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
