"""Benchmark the PaDiM main job: accuracy, wall time and peak memory per dataset.

Runs ``defectscope train`` and ``defectscope evaluate`` as child processes on
MVTec AD bottle and the magnetic-tile split, and measures each child's wall
time and peak resident set size (from ``os.wait4``). A second part trains on
magnetic tile with 100 and with all 762 training images (no test split, so
only fitting and calibration run) to show that training memory does not grow
with the number of images. Writes a Markdown table and a CSV.

Usage::

    python scripts/bench_padim.py --data ../shared/data --output runs/bench-padim
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from defectscope.data.datasets import by_split, read_split_csv, write_manifest  # noqa: E402

METRICS = ("image_auroc", "image_aupr", "image_f1", "pixel_auroc", "aupro", "fit_seconds")


def run_child(command: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that child alone."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "defectscope", *args]


def accuracy_runs(data: Path, output: Path, extra: list[str]) -> list[dict]:
    datasets = {
        "bottle": data / "mvtec_ad" / "bottle",
        "magnetic_tile": data / "magnetic_tile" / "split.csv",
    }
    rows = []
    for name, spec in datasets.items():
        run_dir = output / name
        train_seconds, train_rss = run_child(cli("train", str(spec), "-o", str(run_dir), "-q", "--no-report", *extra))
        eval_seconds, eval_rss = run_child(cli("evaluate", str(run_dir / "bundle"), str(spec), "-o", str(run_dir / "evaluate"), "-q", "--no-report"))
        metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
        row = {"dataset": name, **{key: metrics.get(key) for key in METRICS}}
        row["fit_seconds"] = json.loads((run_dir / "metrics.json").read_text())["fit_seconds"]
        row.update({
            "train_command_seconds": round(train_seconds, 1),
            "train_peak_rss_mib": round(train_rss),
            "evaluate_command_seconds": round(eval_seconds, 1),
            "evaluate_scoring_seconds": metrics["seconds"],
            "evaluate_peak_rss_mib": round(eval_rss),
        })
        rows.append(row)
    return rows


def memory_runs(data: Path, output: Path) -> list[dict]:
    csv_path = data / "magnetic_tile" / "split.csv"
    train = sorted(by_split(read_split_csv(csv_path), "train"), key=lambda s: str(s.image_path))
    rows = []
    for count in (100, len(train)):
        manifest = write_manifest(train[:count], output / f"magnetic_tile_train{count}.csv")
        seconds, rss = run_child(cli("train", str(manifest), "-o", str(output / f"memory_{count}"), "-q", "--no-report"))
        rows.append({"train_images": count, "train_command_seconds": round(seconds, 1), "peak_rss_mib": round(rss)})
    return rows


def write_tables(accuracy: list[dict], memory: list[dict], output: Path) -> Path:
    lines = ["| dataset | image AUROC | image AUPR | image F1 (calibrated) | pixel AUROC | AUPRO | fit s | train cmd s | evaluate cmd s | scoring s | train peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in accuracy:
        lines.append(
            f"| {row['dataset']} | {row['image_auroc']:.3f} | {row['image_aupr']:.3f} | {row['image_f1']:.3f} | "
            f"{row['pixel_auroc']:.3f} | {row['aupro']:.3f} | {row['fit_seconds']:.1f} | {row['train_command_seconds']} | "
            f"{row['evaluate_command_seconds']} | {row['evaluate_scoring_seconds']:.1f} | {row['train_peak_rss_mib']} |"
        )
    if memory:
        lines += ["", "| magnetic tile training images | train cmd s | peak RSS MiB |", "|---|---|---|"]
        lines += [f"| {row['train_images']} | {row['train_command_seconds']} | {row['peak_rss_mib']} |" for row in memory]
        ratio = memory[-1]["peak_rss_mib"] / memory[0]["peak_rss_mib"]
        lines += ["", f"Peak RSS ratio, {memory[-1]['train_images']} vs {memory[0]['train_images']} images: {ratio:.2f}"]
    markdown = output / "padim.md"
    markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(output / "padim.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(accuracy[0]))
        writer.writeheader()
        writer.writerows(accuracy)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-padim"))
    parser.add_argument("--skip-memory", action="store_true", help="Skip the 100 vs all training images memory runs.")
    parser.add_argument("train_args", nargs="*", help="Extra options passed to `defectscope train` (after --).")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    accuracy = accuracy_runs(args.data, args.output, args.train_args)
    memory = [] if args.skip_memory else memory_runs(args.data, args.output)
    markdown = write_tables(accuracy, memory, args.output)
    sys.stdout.write(markdown.read_text())


if __name__ == "__main__":
    main()
