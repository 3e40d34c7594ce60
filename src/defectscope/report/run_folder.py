"""Report for a finished run folder: re-score its test images from the bundle, then write the HTML report.

A run folder is what ``defectscope train`` writes (``bundle/``, ``split.csv``,
``metrics.json``, ``scores.csv``) or what ``defectscope evaluate`` writes
(``split.csv`` of the test images, ``metrics.json`` naming the bundle).
Anomaly maps are not stored in the folder, so the test images are scored
again through the same inference path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from defectscope.data.datasets import by_split, read_split_csv
from defectscope.evaluation import EvaluationResult, evaluate
from defectscope.report.html import REPORT_NAME, ReportOptions, write_report
from defectscope.runtime.inferencer import Inferencer

logger = logging.getLogger(__name__)

# Metrics measured during training that re-scoring cannot reproduce.
_KEPT_FROM_RUN = ("fit_seconds", "calibration_seconds")


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def find_bundle(run_dir: Path, metrics: dict[str, Any]) -> Path:
    """Return the run's bundle: ``run_dir/bundle``, else the ``bundle`` path that ``evaluate`` stores in metrics.json.

    Raises ``FileNotFoundError`` when neither exists.
    """
    candidates = [run_dir / "bundle"]
    if metrics.get("bundle"):
        candidates.append(Path(metrics["bundle"]))
    for candidate in candidates:
        if (candidate / "metadata.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no bundle found for run folder {run_dir}: looked in {', '.join(str(c) for c in candidates)}. Pass --bundle with the bundle directory."
    )


def evaluate_run(run_dir: str | Path, bundle_dir: str | Path | None = None, runtime: str = "torch", batch_size: int = 16, progress: bool = True) -> tuple[EvaluationResult, Inferencer]:
    """Score the test split of ``run_dir/split.csv`` with the run's bundle (or ``bundle_dir``).

    Timings recorded during training (fit and calibration seconds) are copied
    from the run's metrics.json. Raises ``FileNotFoundError`` for a missing
    split.csv or bundle, and ``ValueError`` when split.csv has no test images.
    """
    run_dir = Path(run_dir)
    split_csv = run_dir / "split.csv"
    if not split_csv.is_file():
        raise FileNotFoundError(f"{split_csv} not found: expected a folder written by `defectscope train` or `defectscope evaluate`")
    stored = _read_metrics(run_dir)
    bundle_dir = Path(bundle_dir) if bundle_dir is not None else find_bundle(run_dir, stored)

    test_samples = by_split(read_split_csv(split_csv), "test")
    if not test_samples:
        raise ValueError(f"{split_csv} lists no test images, so there is nothing to report")
    inferencer = Inferencer.load(bundle_dir, runtime)
    evaluation = evaluate(inferencer, test_samples, batch_size, progress)
    for key in _KEPT_FROM_RUN:
        if key in stored:
            evaluation.metrics[key] = stored[key]
    return evaluation, inferencer


def report_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    bundle_dir: str | Path | None = None,
    runtime: str = "torch",
    batch_size: int = 16,
    options: ReportOptions | None = None,
    progress: bool = True,
) -> Path:
    """Write the HTML report of a run folder to ``output`` (default ``run_dir/report.html``) and return its path.

    Raises ``FileNotFoundError`` or ``ValueError`` as ``evaluate_run`` does.
    """
    run_dir = Path(run_dir)
    evaluation, inferencer = evaluate_run(run_dir, bundle_dir, runtime, batch_size, progress)
    output = Path(output) if output is not None else run_dir / REPORT_NAME
    return write_report(evaluation, inferencer.metadata, output, source=str(run_dir / "split.csv"), options=options)
