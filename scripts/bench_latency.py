"""Measure per-image latency, score parity and size of a bundle on every backend.

For each bundle: batch-1 latency over the test images (median and p90 after a
warm-up), network only (``backend.run`` on preprocessed arrays) and end to
end (``Inferencer.predict`` on the file: decode, resize, normalize, network,
image score, threshold). The floor is the bare backbone forward, exported to
OpenVINO fp32 and timed the same way. Parity compares each backend's maps and
scores with the PyTorch backend's on the same images; AUROC uses the folder
name (``good`` or a defect type) as the label.

Every backend, and the floor, runs in a child process of its own, so no
other runtime's threads or memory share the process being timed. The
children run in ``--rounds`` interleaved rounds. Medians and p90 are taken
over the times of all rounds, and each round's median is kept in the JSON to
show how much the machine drifted.

Usage::

    python scripts/bench_latency.py runs/bottle-padim/bundle \\
        --images ../shared/data/mvtec_ad/bottle/test --output bench.json

Export the bundle first (``defectscope export BUNDLE --format all
--precision fp32 --precision fp16 --precision int8``); backends whose export
is missing are skipped. Run nothing else on the machine while it measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from defectscope.bundle.metadata import read_metadata
from defectscope.data.image_io import read_image
from defectscope.metrics import image_metrics
from defectscope.runtime.exported import available_cpus
from defectscope.runtime.inferencer import Inferencer
from defectscope.scoring.processing import preprocess

BACKENDS = [("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8"), ("openvino", "bf16")]
FLOOR = ("floor", "fp32")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_calls(function, inputs: list, warmup: int) -> list[float]:
    """Call ``function`` on each input after ``warmup`` untimed calls; return milliseconds per call."""
    for item in inputs[:warmup]:
        function(item)
    times = []
    for item in inputs:
        started = time.perf_counter()
        function(item)
        times.append(1000 * (time.perf_counter() - started))
    return times


def preprocessed(bundle: Path, images: list[Path]) -> list[np.ndarray]:
    metadata = read_metadata(bundle)
    input_size = tuple(metadata["input_size"])
    # np.stack, as Inferencer does: an ``array[None]`` view has stride 0 on the batch axis, which sent
    # torch 2.14's convolution down a path about 10x slower.
    return [np.stack([preprocess(read_image(path), input_size, metadata["mean"], metadata["std"])]) for path in images]


def floor_times(bundle: Path, arrays: list[np.ndarray], warmup: int) -> dict[str, list[float]]:
    """Latency of the bare backbone forward exported to OpenVINO fp32."""
    import torch

    from defectscope.bundle.io import load_bundle
    from defectscope.bundle.telemetry_guard import import_without_telemetry

    model, _ = load_bundle(bundle)
    backbone = model.backbone.eval()
    openvino = import_without_telemetry("openvino")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "backbone.onnx"
        torch.onnx.export(backbone, (torch.from_numpy(arrays[0]),), str(path), opset_version=17, dynamo=False)
        del model, backbone
        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": available_cpus()}
        request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
        return {"network": time_calls(lambda x: request.infer({0: x}), arrays, warmup)}


def worker(bundle: Path, runtime: str, precision: str, images: list[Path], warmup: int, output: Path) -> None:
    """Child process: time one backend and save its times, maps and scores to ``output`` (.npz)."""
    arrays = preprocessed(bundle, images)
    if runtime == FLOOR[0]:
        np.savez(output, network=floor_times(bundle, arrays, warmup)["network"])
        return
    try:
        inferencer = Inferencer.load(bundle, runtime, precision)
    except (ValueError, ImportError) as error:
        np.savez(output, skipped=str(error))
        return
    network = time_calls(inferencer.backend.run, arrays, warmup)
    end_to_end = time_calls(lambda path: inferencer.predict([path], batch_size=1), images, warmup)
    predictions = inferencer.predict(images, batch_size=1)
    np.savez(
        output, network=network, end_to_end=end_to_end, threshold=inferencer.threshold,
        maps=np.stack([p.anomaly_map for p in predictions]),
        scores=np.array([p.image_score for p in predictions]),
        verdicts=np.array([p.is_anomalous for p in predictions]),
    )


def run_child(bundle: Path, runtime: str, precision: str, images_dir: Path, limit: int, warmup: int, output: Path) -> dict:
    command = [
        sys.executable, __file__, "--worker", runtime, precision, str(bundle), "--images", str(images_dir),
        "--limit", str(limit), "--warmup", str(warmup), "--worker-output", str(output),
    ]
    subprocess.run(command, check=True)
    with np.load(output) as data:
        return {key: data[key] for key in data.files}


def summarize(times: list[list[float]]) -> dict[str, float | list[float]]:
    pooled = [value for round_times in times for value in round_times]
    return {"median_ms": statistics.median(pooled), "p90_ms": percentile(pooled, 90), "round_medians_ms": [statistics.median(t) for t in times]}


def measure_bundle(bundle: Path, images_dir: Path, images: list[Path], limit: int, warmup: int, rounds: int, backends: list[tuple[str, str]]) -> dict:
    metadata = read_metadata(bundle)
    labels = np.array([path.parent.name != "good" for path in images], dtype=int)
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(rounds):
            for runtime, precision in [FLOOR, *backends]:
                result = run_child(bundle, runtime, precision, images_dir, limit, warmup, Path(folder) / f"{runtime}-{precision}-{round_index}.npz")
                if "skipped" in result:
                    if round_index == 0:
                        print(f"skipped {runtime} {precision}: {result['skipped']}")
                    continue
                runs.setdefault((runtime, precision), []).append(result)
                print(f"round {round_index + 1}: {runtime} {precision}: network {statistics.median(result['network']):.1f} ms", flush=True)

    floor = summarize([list(r["network"]) for r in runs.pop(FLOOR)])
    rows = {}
    reference = runs[("torch", "fp32")][0]
    per_image_peak = np.abs(reference["maps"]).reshape(len(images), -1).max(axis=1)
    for (runtime, precision), results in runs.items():
        first = results[0]
        network = summarize([list(r["network"]) for r in results])
        end_to_end = summarize([list(r["end_to_end"]) for r in results])
        per_image_error = np.abs(first["maps"] - reference["maps"]).reshape(len(images), -1).max(axis=1)
        rows[f"{runtime} {precision}"] = {
            "network_median_ms": network["median_ms"], "network_p90_ms": network["p90_ms"], "network_round_medians_ms": network["round_medians_ms"],
            "end_to_end_median_ms": end_to_end["median_ms"], "end_to_end_p90_ms": end_to_end["p90_ms"],
            "end_to_end_round_medians_ms": end_to_end["round_medians_ms"],
            "image_auroc": image_metrics(labels, first["scores"], float(first["threshold"]))["image_auroc"],
            "max_abs_map_diff": float(per_image_error.max()),
            "max_rel_map_diff": float((per_image_error / per_image_peak).max()),
            "max_rel_score_diff": float((np.abs(first["scores"] - reference["scores"]) / np.abs(reference["scores"])).max()),
            "label_flips": int((first["verdicts"] != reference["verdicts"]).sum()),
        }
    return {
        "bundle": str(bundle),
        "model": metadata["model"],
        "model_options": metadata.get("model_options", {}),
        "input_size": metadata["input_size"],
        "images": len(images),
        "rounds": rounds,
        "backends": rows,
        "backbone_floor": {"openvino_median_ms": floor["median_ms"], "openvino_p90_ms": floor["p90_ms"], "round_medians_ms": floor["round_medians_ms"]},
        "sizes_bytes": bundle_sizes(bundle, metadata),
    }


def bundle_sizes(bundle: Path, metadata: dict) -> dict[str, int]:
    sizes = {"safetensors": (bundle / "model.safetensors").stat().st_size}
    for key, record in metadata.get("exports", {}).items():
        sizes[key] = sum(info["bytes"] for info in record["files"].values())
    return sizes


def model_label(result: dict) -> str:
    block = result["model_options"].get("covariance_block", 1)
    return f"{result['model']}, covariance block {block}" if block > 1 else result["model"]


def print_tables(results: list[dict]) -> None:
    print("\n| model | backend | network median / p90 (ms) | end-to-end median / p90 (ms) | x backbone floor | max abs map diff | max rel map diff | max rel score diff | label flips | image AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        floor = result["backbone_floor"]
        for key, row in result["backends"].items():
            print(
                f"| {model_label(result)} | {key} | {row['network_median_ms']:.1f} / {row['network_p90_ms']:.1f} | "
                f"{row['end_to_end_median_ms']:.1f} / {row['end_to_end_p90_ms']:.1f} | {row['network_median_ms'] / floor['openvino_median_ms']:.2f} | "
                f"{row['max_abs_map_diff']:.2e} | {row['max_rel_map_diff']:.2e} | {row['max_rel_score_diff']:.2e} | {row['label_flips']} | {row['image_auroc']:.4f} |"
            )
        print(
            f"| {model_label(result)} | backbone only, OpenVINO fp32 | {floor['openvino_median_ms']:.1f} / {floor['openvino_p90_ms']:.1f} | | 1.00 | | | | | |"
        )
    print("\n| model | file set | size (MB) |")
    print("|---|---|---|")
    for result in results:
        for key, size in result["sizes_bytes"].items():
            print(f"| {model_label(result)} | {key} | {size / 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="Exported bundle directories.")
    parser.add_argument("--images", type=Path, required=True, help="Test folder with one subfolder per label (good, defect types).")
    parser.add_argument("--limit", type=int, default=0, help="Use only the first N images (0: all).")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls before timing each backend.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of child processes per bundle.")
    parser.add_argument(
        "--backends", default=",".join(f"{r}:{p}" for r, p in BACKENDS),
        help="Comma-separated RUNTIME:PRECISION pairs; torch:fp32 is always measured, as the parity reference.",
    )
    parser.add_argument("--output", type=Path, help="JSON file for the full results.")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    images = sorted(args.images.glob("*/*.png"))
    if args.limit:
        images = images[: args.limit]
    if args.worker:
        worker(args.bundles[0], *args.worker, images, args.warmup, args.worker_output)
        return

    print(f"{len(images)} images, {available_cpus()} CPUs, {args.rounds} rounds")
    backends = [tuple(pair.split(":")) for pair in args.backends.split(",")]
    backends = [("torch", "fp32")] + [pair for pair in backends if pair != ("torch", "fp32")]
    results = [measure_bundle(bundle, args.images, images, args.limit, args.warmup, args.rounds, backends) for bundle in args.bundles]
    print_tables(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.output}")


if __name__ == "__main__":
    main()
