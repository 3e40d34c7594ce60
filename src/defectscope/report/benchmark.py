"""Benchmark: train every model on every dataset in a child process and tabulate metrics, time and memory.

Each run is ``python -m defectscope train ...`` in its own process, so its
peak resident memory (``ru_maxrss`` from ``os.wait4``) belongs to that run
alone. Results go to Markdown and CSV tables, optionally next to reference
figures that the user supplies.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# (metrics.json key, column title). image_f1 is taken at the calibrated threshold.
METRIC_COLUMNS = [
    ("image_auroc", "image AUROC"),
    ("image_aupr", "image AUPR"),
    ("image_f1", "image F1"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "pixel AUPRO"),
]
RESOURCE_COLUMNS = [
    ("fit_seconds", "train s"),
    ("ms_per_image", "ms per image"),
    ("peak_rss_mb", "peak RSS MB"),
    ("wall_seconds", "wall s"),
]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as ``defectscope train`` accepts it, under a short name for the tables."""

    name: str
    spec: str
    category: str | None = None


@dataclass
class BenchmarkRun:
    """One model trained and tested on one dataset: its metrics.json values plus measured wall time and peak memory."""

    model: str
    dataset: str
    run_dir: Path
    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def value(self, key: str) -> Any:
        """Return a table value: a measured resource or a metrics.json entry (None when missing)."""
        if key == "peak_rss_mb":
            return self.peak_rss_mb
        if key == "wall_seconds":
            return self.wall_seconds
        return self.metrics.get(key)


def short_name(spec: str) -> str:
    """Derive a table name from a dataset spec: the folder name, a CSV's folder name, or ``elpv``.

    >>> short_name("/data/mvtec_ad/bottle")
    'bottle'
    >>> short_name("/data/magnetic_tile/split.csv")
    'magnetic_tile'
    >>> short_name("/data/visa/split_csv/1cls.csv")
    'visa'
    """
    path = Path(spec)
    if path.suffix.lower() == ".csv":
        folder = path.parent
        return folder.parent.name if folder.name == "split_csv" else folder.name
    return path.name or spec


def parse_dataset(text: str) -> DatasetSpec:
    """Parse ``[NAME=]SPEC[#CATEGORY]``, e.g. ``bottle=/data/mvtec_ad/bottle`` or ``visa.csv#candle``.

    Raises ``ValueError`` for an empty spec or name.
    """
    name, separator, spec = text.partition("=")
    if not separator:
        name, spec = "", text
    spec, _, category = spec.partition("#")
    if not spec.strip():
        raise ValueError(f"invalid dataset {text!r}: expected [NAME=]SPEC[#CATEGORY], e.g. bottle=/data/mvtec_ad/bottle")
    name = name.strip() or short_name(spec.strip()) + (f"-{category.strip()}" if category.strip() else "")
    return DatasetSpec(name, spec.strip(), category.strip() or None)


def read_references(path: str | Path) -> dict[tuple[str, str, str], float]:
    """Read reference figures from a CSV with the columns ``model,dataset,metric,value``.

    ``metric`` is a metrics.json key (e.g. ``image_auroc``, ``aupro``) and
    ``dataset`` a benchmark dataset name. Raises ``ValueError`` for a missing
    column or a value that is not a number, naming the line.
    """
    path = Path(path)
    references: dict[tuple[str, str, str], float] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"model", "dataset", "metric", "value"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} lacks the columns {', '.join(sorted(missing))}: expected a header model,dataset,metric,value")
        for row in reader:
            try:
                value = float(row["value"])
            except ValueError:
                raise ValueError(f"{path} line {reader.line_num}: value {row['value']!r} is not a number") from None
            references[(row["model"].strip(), row["dataset"].strip(), row["metric"].strip())] = value
    return references


def _peak_rss_mb(max_rss: int) -> float:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return max_rss / (1024 * 1024) if sys.platform == "darwin" else max_rss / 1024


def run_one(model: str, dataset: DatasetSpec, run_dir: Path, train_args: list[str], timeout: float | None = None) -> BenchmarkRun:
    """Train ``model`` on ``dataset`` in a child ``defectscope train`` process and collect its metrics and peak memory.

    The child's output goes to ``run_dir/train.log``. A run that fails or
    passes ``timeout`` seconds is returned with its return code and the end
    of its log as ``error``, so one failure does not stop a benchmark.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "defectscope", "train", dataset.spec, "--output", str(run_dir), "--model", model, "--quiet", *train_args]
    if dataset.category:
        command += ["--category", dataset.category]
    logger.info("running %s", " ".join(command))

    log_path = run_dir / "train.log"
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, process.kill) if timeout else None
        if timer:
            timer.start()
        # os.wait4 returns this child's own resource usage, unlike getrusage(RUSAGE_CHILDREN), which keeps a maximum over all children.
        _, status, usage = os.wait4(process.pid, 0)
        if timer:
            timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall_seconds = time.perf_counter() - started

    run = BenchmarkRun(model, dataset.name, run_dir, process.returncode, round(wall_seconds, 1), round(_peak_rss_mb(usage.ru_maxrss), 1))
    metrics_path = run_dir / "metrics.json"
    if process.returncode == 0 and metrics_path.is_file():
        run.metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    else:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        run.error = f"exit code {process.returncode}: " + " / ".join(tail)
        logger.error("%s on %s failed (%s), log in %s", model, dataset.name, run.error, log_path)
    return run


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) <= 1 else f"{value:.1f}"
    return str(value)


def table_rows(runs: list[BenchmarkRun], references: dict[tuple[str, str, str], float] | None = None) -> tuple[list[str], list[list[str]]]:
    """Build the header and rows shared by the Markdown and CSV tables.

    A reference column follows a metric or resource column (such as
    ``fit_seconds``) when ``references`` has a figure for that key on any run.
    """
    references = references or {}
    referenced = {metric for (_, _, metric) in references}
    header = ["model", "dataset"]
    for key, title in METRIC_COLUMNS + RESOURCE_COLUMNS:
        header.append(title)
        if key in referenced:
            header.append(f"{title} (reference)")
    header.append("status")

    rows = []
    for run in runs:
        row = [run.model, run.dataset]
        for key, _ in METRIC_COLUMNS + RESOURCE_COLUMNS:
            row.append(_cell(run.value(key)))
            if key in referenced:
                row.append(_cell(references.get((run.model, run.dataset, key))))
        row.append("ok" if not run.error else run.error.replace("|", "/"))
        rows.append(row)
    return header, rows


def write_tables(runs: list[BenchmarkRun], output_dir: Path, references: dict[tuple[str, str, str], float] | None = None, note: str = "") -> tuple[Path, Path]:
    """Write ``benchmark.md`` and ``benchmark.csv`` to ``output_dir`` and return their paths."""
    header, rows = table_rows(runs, references)
    output_dir.mkdir(parents=True, exist_ok=True)

    csv_path = output_dir / "benchmark.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    markdown_path = output_dir / "benchmark.md"
    markdown_path.write_text((note + "\n\n" if note else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return markdown_path, csv_path


def run_benchmark(
    models: list[str],
    datasets: list[DatasetSpec],
    output_dir: str | Path,
    train_args: list[str] | None = None,
    references: dict[tuple[str, str, str], float] | None = None,
    timeout: float | None = None,
) -> tuple[list[BenchmarkRun], Path, Path]:
    """Train each model on each dataset, one child process at a time, and write the tables.

    Runs go to ``output_dir/<dataset>-<model>``, each with its bundle,
    metrics, report and ``train.log``. Returns the runs and the paths of
    ``benchmark.md`` and ``benchmark.csv``.
    """
    output_dir = Path(output_dir)
    train_args = list(train_args or [])
    runs = []
    for dataset in datasets:
        for model in models:
            runs.append(run_one(model, dataset, output_dir / f"{dataset.name}-{model}", train_args, timeout))

    note = (
        "Each run: `python -m defectscope train SPEC --model MODEL " + " ".join(train_args) + "` in its own process. "
        "image F1 is at the calibrated threshold; train s is the model fit; ms per image is test scoring; "
        "peak RSS is the whole train process (training, calibration, test scoring, report); wall s is the process's wall time."
    )
    markdown_path, csv_path = write_tables(runs, output_dir, references, note)
    return runs, markdown_path, csv_path
