"""Torch-free backends that run an exported bundle: ONNX Runtime and OpenVINO.

Both take normalized float32 images (batch, 3, height, width) and return
float32 anomaly maps (batch, height, width). ``Inferencer`` does the numpy
pre- and post-processing around them. This module imports neither torch nor
the export code, and the runtime packages are imported when a backend loads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.bundle.metadata import BundleError, read_metadata

logger = logging.getLogger(__name__)

# Precisions each runtime accepts. OpenVINO's bf16 runs the fp32 IR with a
# bf16 inference hint; it is only offered as an explicit choice because it
# moves scores (see docs/deployment.md).
ONNX_PRECISIONS = ("fp32",)
OPENVINO_PRECISIONS = ("fp32", "fp16", "int8", "bf16")
RUNTIME_EXTRA_HINT = "pip install 'defectscope[runtime]'"


def load_backend(bundle_dir: str | Path, runtime: str, precision: str = "fp32", threads: int | None = None, cache_dir: str | Path | None = None):
    """Load the exported network of a bundle for ``runtime`` (``onnx`` or ``openvino``).

    Parameters
    ----------
    bundle_dir:
        Bundle directory with an export recorded in its metadata.
    runtime:
        ``onnx`` (ONNX Runtime, CPUExecutionProvider) or ``openvino`` (CPU).
    precision:
        ``fp32`` for both; OpenVINO also takes ``fp16``, ``int8`` and ``bf16``.
    threads:
        Intra-op threads. Default: the CPUs this process may run on.
    cache_dir:
        OpenVINO compile cache folder, or None (the default) for no cache.
        ``default_cache_dir()`` gives a per-user location.

    Raises
    ------
    BundleError
        If the bundle lacks the export (the message gives the export command).
    ValueError
        If the runtime or precision is invalid.
    ImportError
        If the runtime package is not installed.
    """
    bundle_dir = Path(bundle_dir)
    metadata = read_metadata(bundle_dir)
    threads = threads or available_cpus()
    if runtime == "onnx":
        _check_precision(runtime, precision, ONNX_PRECISIONS)
        path = _export_file(bundle_dir, metadata, "onnx", "--format onnx")
        return OnnxRuntimeBackend(path, threads)
    if runtime == "openvino":
        _check_precision(runtime, precision, OPENVINO_PRECISIONS)
        stored = "fp32" if precision == "bf16" else precision
        option = "--format openvino" + ("" if stored == "fp32" else f" --precision {stored}")
        path = _export_file(bundle_dir, metadata, f"openvino_{stored}", option)
        return OpenVinoBackend(path, precision, threads, cache_dir)
    raise ValueError(f"invalid runtime {runtime!r} for an exported bundle: expected onnx or openvino")


def available_cpus() -> int:
    """Number of CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """Per-user OpenVINO compile cache: ``$XDG_CACHE_HOME/defectscope/openvino`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "defectscope" / "openvino"


def _check_precision(runtime: str, precision: str, allowed: tuple[str, ...]) -> None:
    if precision not in allowed:
        raise ValueError(f"invalid precision {precision!r} for runtime {runtime}: expected one of {', '.join(allowed)}")


def _export_file(bundle_dir: Path, metadata: dict[str, Any], key: str, option: str) -> Path:
    """Return the main file of export ``key`` after checking it is recorded and complete."""
    record = metadata.get("exports", {}).get(key)
    fix = f"run `defectscope export {bundle_dir} {option}`"
    if record is None:
        raise BundleError(f"bundle {bundle_dir} has no {key} export; {fix}")
    for name, info in record["files"].items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"bundle {bundle_dir} is missing {name} of its {key} export; {fix}")
        if path.stat().st_size != info["bytes"]:
            raise BundleError(f"{path} has {path.stat().st_size} bytes, metadata records {info['bytes']}: the export is incomplete; {fix}")
    return bundle_dir / next(iter(record["files"]))


class OnnxRuntimeBackend:
    """Runs ``model.onnx`` with ONNX Runtime's CPUExecutionProvider.

    One session per backend; ``run`` may be called from several threads
    (ONNX Runtime sessions allow concurrent ``run`` calls).
    """

    name = "onnx"

    def __init__(self, path: Path, threads: int) -> None:
        from defectscope.bundle.telemetry_guard import import_without_telemetry

        try:
            onnxruntime = import_without_telemetry("onnxruntime")
        except ImportError as error:
            raise ImportError(f"the onnx runtime needs onnxruntime ({error}); {RUNTIME_EXTRA_HINT}") from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, images: np.ndarray) -> np.ndarray:
        """Return anomaly maps (batch, height, width), float32, for images (batch, 3, height, width)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: images})[0]


class OpenVinoBackend:
    """Runs an OpenVINO IR on the CPU device.

    ``precision`` sets the inference precision hint: ``f32`` for fp32, fp16
    and int8 IRs (fp16 IRs store rounded weights, int8 IRs carry their own
    quantized operations), ``bf16`` only when asked for. OpenVINO's CPU
    default on bf16-capable processors is bf16, so the hint is always set.
    One infer request per backend, so ``run`` is not thread-safe.
    """

    name = "openvino"

    def __init__(self, xml_path: Path, precision: str, threads: int, cache_dir: str | Path | None = None) -> None:
        from defectscope.bundle.telemetry_guard import import_without_telemetry

        try:
            openvino = import_without_telemetry("openvino")
        except ImportError as error:
            raise ImportError(f"the openvino runtime needs openvino ({error}); {RUNTIME_EXTRA_HINT}") from error
        core = openvino.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        self.precision = precision
        self.compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, images: np.ndarray) -> np.ndarray:
        """Return anomaly maps (batch, height, width), float32, for images (batch, 3, height, width)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        outputs = self.request.infer({0: images})
        return np.asarray(outputs[0], dtype=np.float32)
