"""Measure per-image latency, score parity and size of a bundle on every backend.

For each bundle: batch-1 latency over the test images (median and p90 after a
warm-up), network only (``backend.run`` on preprocessed arrays) and end to
end (``Inferencer.predict`` on the file: decode, resize, normalize, network,
image score, threshold). The floor is the bare backbone forward, exported to
OpenVINO fp32 and timed the same way. Parity compares each backend's maps and
scores with the PyTorch backend's on the same images; AUROC uses the folder
name (``good`` or a defect type) as the label.

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


def backbone_floor(bundle: Path, arrays: list[np.ndarray], warmup: int) -> dict[str, float]:
    """Latency of the bare backbone forward: PyTorch, and exported to OpenVINO fp32."""
    import torch

    from defectscope.bundle.io import load_bundle
    from defectscope.bundle.telemetry_guard import import_without_telemetry

    model, _ = load_bundle(bundle)
    backbone = model.backbone.eval()
    with torch.inference_mode():
        torch_times = time_calls(lambda x: backbone(torch.from_numpy(x)), arrays, warmup)

    openvino = import_without_telemetry("openvino")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "backbone.onnx"
        torch.onnx.export(backbone, (torch.from_numpy(arrays[0]),), str(path), opset_version=17, dynamo=False)
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": available_cpus()})
        request = compiled.create_infer_request()
        openvino_times = time_calls(lambda x: request.infer({0: x}), arrays, warmup)
    return {
        "torch_median_ms": statistics.median(torch_times), "torch_p90_ms": percentile(torch_times, 90),
        "openvino_median_ms": statistics.median(openvino_times), "openvino_p90_ms": percentile(openvino_times, 90),
    }


def bundle_sizes(bundle: Path, metadata: dict) -> dict[str, int]:
    sizes = {"safetensors": (bundle / "model.safetensors").stat().st_size}
    for key, record in metadata.get("exports", {}).items():
        sizes[key] = sum(info["bytes"] for info in record["files"].values())
    return sizes


def measure_bundle(bundle: Path, images: list[Path], warmup: int) -> dict:
    metadata = read_metadata(bundle)
    input_size = tuple(metadata["input_size"])
    labels = np.array([path.parent.name != "good" for path in images], dtype=int)
    # np.stack, as Inferencer does: an ``array[None]`` view has stride 0 on the batch axis, which sent
    # torch 2.14's convolution down a path about 10x slower.
    arrays = [np.stack([preprocess(read_image(path), input_size, metadata["mean"], metadata["std"])]) for path in images]

    rows = {}
    reference = None
    for runtime, precision in BACKENDS:
        key = f"{runtime} {precision}"
        try:
            inferencer = Inferencer.load(bundle, runtime, precision)
        except (ValueError, ImportError) as error:
            print(f"skipped {key}: {error}")
            continue
        network = time_calls(inferencer.backend.run, arrays, warmup)
        end_to_end = time_calls(lambda path: inferencer.predict([path], batch_size=1), images, warmup)
        predictions = inferencer.predict(images, batch_size=1)
        maps = np.stack([p.anomaly_map for p in predictions])
        scores = np.array([p.image_score for p in predictions])
        verdicts = np.array([p.is_anomalous for p in predictions])
        row = {
            "network_median_ms": statistics.median(network), "network_p90_ms": percentile(network, 90),
            "end_to_end_median_ms": statistics.median(end_to_end), "end_to_end_p90_ms": percentile(end_to_end, 90),
            "image_auroc": image_metrics(labels, scores, inferencer.threshold)["image_auroc"],
        }
        if reference is None:
            reference = (maps, scores, verdicts)
        reference_maps, reference_scores, reference_verdicts = reference
        per_image_peak = np.abs(reference_maps).reshape(len(images), -1).max(axis=1)
        per_image_error = np.abs(maps - reference_maps).reshape(len(images), -1).max(axis=1)
        row["max_abs_map_diff"] = float(per_image_error.max())
        row["max_rel_map_diff"] = float((per_image_error / per_image_peak).max())
        row["max_rel_score_diff"] = float((np.abs(scores - reference_scores) / np.abs(reference_scores)).max())
        row["label_flips"] = int((verdicts != reference_verdicts).sum())
        rows[key] = row
        print(f"{key}: network {row['network_median_ms']:.1f} ms, end to end {row['end_to_end_median_ms']:.1f} ms", flush=True)

    return {
        "bundle": str(bundle),
        "model": metadata["model"],
        "input_size": list(input_size),
        "images": len(images),
        "backends": rows,
        "backbone_floor": backbone_floor(bundle, arrays, warmup),
        "sizes_bytes": bundle_sizes(bundle, metadata),
    }


def print_tables(results: list[dict]) -> None:
    print("\n| model | backend | network median / p90 (ms) | end-to-end median / p90 (ms) | x backbone floor | max abs map diff | max rel map diff | max rel score diff | label flips | image AUROC |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        floor = result["backbone_floor"]
        for key, row in result["backends"].items():
            print(
                f"| {result['model']} | {key} | {row['network_median_ms']:.1f} / {row['network_p90_ms']:.1f} | "
                f"{row['end_to_end_median_ms']:.1f} / {row['end_to_end_p90_ms']:.1f} | {row['network_median_ms'] / floor['openvino_median_ms']:.2f} | "
                f"{row['max_abs_map_diff']:.2e} | {row['max_rel_map_diff']:.2e} | {row['max_rel_score_diff']:.2e} | {row['label_flips']} | {row['image_auroc']:.4f} |"
            )
        print(
            f"| {result['model']} | backbone only, OpenVINO fp32 | {floor['openvino_median_ms']:.1f} / {floor['openvino_p90_ms']:.1f} | | 1.00 | | | | | |"
        )
        print(f"| {result['model']} | backbone only, torch | {floor['torch_median_ms']:.1f} / {floor['torch_p90_ms']:.1f} | | | | | | | |")
    print("\n| model | file set | size (MB) |")
    print("|---|---|---|")
    for result in results:
        for key, size in result["sizes_bytes"].items():
            print(f"| {result['model']} | {key} | {size / 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="Exported bundle directories.")
    parser.add_argument("--images", type=Path, required=True, help="Test folder with one subfolder per label (good, defect types).")
    parser.add_argument("--limit", type=int, default=0, help="Use only the first N images (0: all).")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls before timing each backend.")
    parser.add_argument("--output", type=Path, help="JSON file for the full results.")
    args = parser.parse_args()

    images = sorted(args.images.glob("*/*.png"))
    if args.limit:
        images = images[: args.limit]
    import torch

    print(f"{len(images)} images, {available_cpus()} CPUs, torch threads {torch.get_num_threads()}")
    results = [measure_bundle(bundle, images, args.warmup) for bundle in args.bundles]
    print_tables(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results: {args.output}")


if __name__ == "__main__":
    main()
