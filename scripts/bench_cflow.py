"""Benchmark CFLOW training: accuracy and time for several epoch counts per dataset.

For each dataset and each epoch count, runs ``defectscope train --model cflow``
as a child process and reads the run's ``metrics.json``: image AUROC, pixel
AUROC, AUPRO and ``fit_seconds`` (feature extraction plus flow training). The
child's whole wall time and CPU time (user + system, all threads; including
calibration and test scoring) are measured too. CPU time is less sensitive
than wall time to other processes on the machine. Writes ``cflow.md`` (a Markdown table with the command of every row) and
``cflow.csv`` to the output folder.

Usage::

    python scripts/bench_cflow.py --epochs 1 3 10 --datasets bottle magnetic_tile \\
        --output runs/bench-cflow -- --fibers-per-image 256

Other processes on the machine change the times; run nothing else while it measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

DATASETS = {
    "bottle": ("mvtec_ad", "bottle"),
    "magnetic_tile": ("magnetic_tile", "split.csv"),
}
COLUMNS = ("dataset", "epochs", "image_auroc", "pixel_auroc", "aupro", "fit_seconds", "train_command_seconds", "train_command_cpu_seconds", "command")


def train_command(spec: Path, run_dir: Path, epochs: int, extra: list[str]) -> list[str]:
    return ["defectscope", "train", str(spec), "--model", "cflow", "--epochs", str(epochs), "-o", str(run_dir), "-q", *extra]


def run_one(name: str, spec: Path, epochs: int, output: Path, extra: list[str]) -> dict:
    """Train one model; return its row of the table."""
    run_dir = output / f"{name}-epochs{epochs}"
    command = train_command(spec, run_dir, epochs, extra)
    started = time.perf_counter()
    # ``python -m defectscope`` runs the same entry point as the installed ``defectscope`` script.
    process = subprocess.Popen([sys.executable, "-m", "defectscope", *command[1:]])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    exit_code = os.waitstatus_to_exitcode(status)
    if exit_code != 0:
        raise SystemExit(f"command failed with exit code {exit_code}: {shlex.join(command)}")

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {
        "dataset": name,
        "epochs": epochs,
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
        "aupro": metrics.get("aupro"),
        "fit_seconds": metrics.get("fit_seconds"),
        "train_command_seconds": round(seconds, 1),
        "train_command_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "command": shlex.join(command),
    }


def format_value(key: str, value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}" if key.endswith("seconds") else f"{value:.3f}"
    return str(value)


def write_tables(rows: list[dict], output: Path) -> Path:
    """Write ``cflow.md`` and ``cflow.csv``; return the Markdown path."""
    lines = [
        "| dataset | epochs | image AUROC | pixel AUROC | AUPRO | fit s | train command s | train command CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [format_value(key, row[key]) for key in COLUMNS[:-1]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands:", ""]
    lines += [f"- `{row['command']}`" for row in rows]

    markdown = output / "cflow.md"
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(output / "cflow.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data", help="Folder with mvtec_ad/bottle and magnetic_tile/split.csv.")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-cflow"), help="Folder for the runs and the tables.")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10], help="Epoch counts to train.")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="Datasets to train on.")
    parser.add_argument("train_args", nargs="*", help="Extra options passed to `defectscope train` (after --).")
    args = parser.parse_args()

    args.output.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        spec = args.data.joinpath(*DATASETS[name])
        if not spec.exists():
            raise SystemExit(f"dataset {name} not found at {spec}; pass --data with the folder that contains it")
        for epochs in args.epochs:
            rows.append(run_one(name, spec, epochs, args.output, args.train_args))
            write_tables(rows, args.output)  # keep partial results if a later run fails

    markdown = write_tables(rows, args.output)
    sys.stdout.write(markdown.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
