"""Export a bundle's scoring network to ONNX and OpenVINO IR.

The exported graph is ``AnomalyModel.forward``: backbone, model head,
bilinear upsampling and Gaussian blur. It takes normalized float32 images
(batch, 3, height, width) and returns anomaly maps (batch, height, width) at
the input size, with a dynamic batch axis. Decoding, resizing, mean/std
normalization, the image score, the threshold and score normalization stay
in ``defectscope.scoring.processing`` (numpy), which every backend shares.

Files written into the bundle directory:

- ``model.onnx``: fp32, for ONNX Runtime.
- ``model.xml`` + ``model.bin``: OpenVINO IR, fp32 weights.
- ``model_fp16.xml`` + ``.bin``: weights stored as fp16 and decompressed to
  fp32 when compiled, so only the weights are rounded.
- ``model_int8.xml`` + ``.bin``: post-training quantization with NNCF on
  the bundle's calibration images.

Each export is recorded in ``metadata.json`` under ``exports`` with the
SHA-256 and size of its files.

OpenVINO and NNCF are imported through ``bundle.telemetry_guard`` so that
they send no usage telemetry, and the ONNX file is converted with
``openvino.Core.read_model`` rather than ``openvino.convert_model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.bundle.metadata import METADATA_FILE, ONNX_FILE, BundleError, read_metadata, write_json_atomic

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "anomaly_map"
SPLIT_FILE = "split.csv"
EXPORT_EXTRA_HINT = "pip install 'defectscope[train]'"


def openvino_file(precision: str) -> str:
    """Name of the OpenVINO IR ``.xml`` file for ``precision`` (its ``.bin`` shares the stem)."""
    return "model.xml" if precision == "fp32" else f"model_{precision}.xml"


def parse_formats(value: str | Sequence[str]) -> tuple[str, ...]:
    """Turn ``onnx``, ``openvino``, ``all`` or a list of them into a tuple of formats.

    Raises ``ValueError`` for an unknown format.
    """
    items = [value] if isinstance(value, str) else list(value)
    formats: list[str] = []
    for item in items:
        expanded = FORMATS if item == "all" else (item,)
        for name in expanded:
            if name not in FORMATS:
                raise ValueError(f"invalid export format {name!r}: expected onnx, openvino or all")
            if name not in formats:
                formats.append(name)
    return tuple(formats)


def export_bundle(
    bundle_dir: str | Path,
    formats: str | Sequence[str] = "all",
    precisions: Sequence[str] = ("fp32",),
    calibration_images: Sequence[str | Path] | None = None,
) -> dict[str, Path]:
    """Export a bundle's network and record the files in its metadata.

    Parameters
    ----------
    bundle_dir:
        Bundle directory written by ``defectscope train``.
    formats:
        ``onnx``, ``openvino``, ``all``, or a list of them.
    precisions:
        OpenVINO precisions to write (``fp32``, ``fp16``, ``int8``). ONNX is
        always written in fp32.
    calibration_images:
        Image files for int8 quantization. Default: the calibration split in
        ``split.csv`` next to the bundle (training writes it there).

    Returns
    -------
    A mapping from export key (``onnx``, ``openvino_fp32``, ...) to the main
    file written.

    Raises
    ------
    BundleError
        If the bundle is missing or incomplete.
    ValueError
        If a format or precision is invalid, or int8 has no calibration images.
    ImportError
        If onnx, openvino or nncf (int8) is not installed.
    """
    bundle_dir = Path(bundle_dir)
    formats = parse_formats(formats)
    precisions = tuple(dict.fromkeys(precisions))
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    model, metadata = _load_model(bundle_dir)
    calibration: list[tuple[Path, int]] = []
    train_images: list[Path] = []
    if "int8" in precisions and "openvino" in formats:
        calibration, train_images = _int8_images(bundle_dir, calibration_images)

    written: dict[str, Path] = {}
    records: dict[str, dict[str, Any]] = {}
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=bundle_dir))
    try:
        onnx_path = staging / ONNX_FILE
        _export_onnx_model(model, metadata, onnx_path)
        if "openvino" in formats:
            for precision in precisions:
                xml_name = openvino_file(precision)
                fields: dict[str, Any] = {}
                if precision == "int8":
                    fields = _export_int8(model, metadata, staging, xml_name, calibration, train_images)
                else:
                    _export_openvino(onnx_path, staging / xml_name, precision)
                files = [xml_name, Path(xml_name).with_suffix(".bin").name]
                records[f"openvino_{precision}"] = {**_record(staging, files, runtime="openvino", precision=precision), **fields}
        if "onnx" in formats:
            records["onnx"] = _record(staging, [ONNX_FILE], runtime="onnx", precision="fp32", opset=ONNX_OPSET)
        else:
            onnx_path.unlink()

        for key, record in records.items():
            for name in record["files"]:
                os.replace(staging / name, bundle_dir / name)
            written[key] = bundle_dir / next(iter(record["files"]))
        _update_metadata(bundle_dir, records)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for key, path in written.items():
        logger.info("exported %s: %s", key, path)
    return written


def _int8_images(bundle_dir: Path, calibration_images) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Return the int8 calibration (image, label) rows and the training images.

    Both come from ``split.csv`` next to ``bundle_dir``; ``calibration_images``,
    when given, replace the calibration rows (all labelled normal). Raises
    ``ValueError`` when the file is missing or lacks the rows.
    """
    from defectscope.data.datasets import read_split_csv

    split_csv = bundle_dir.resolve().parent / SPLIT_FILE
    keep = "int8 export refits the model head on the training images listed there, so keep the run folder that training wrote"
    if not split_csv.is_file():
        raise ValueError(f"int8 export needs {split_csv}, which was not found; {keep}")
    samples = read_split_csv(split_csv)
    train_images = [sample.image_path for sample in samples if sample.split == "train"]
    if not train_images:
        raise ValueError(f"int8 export needs training images: {split_csv} has no train rows; {keep}")
    if calibration_images is not None:
        return [(Path(path), 0) for path in calibration_images], train_images
    calibration = [(sample.image_path, sample.label) for sample in samples if sample.split == "calibration"]
    if not calibration:
        raise ValueError(f"int8 export needs calibration images: {split_csv} has no calibration rows; pass --calibration-images DIR with images of good parts")
    return calibration, train_images


def _load_model(bundle_dir: Path):
    """Load the bundle's PyTorch model and metadata, with an install hint when torch is missing."""
    try:
        from defectscope.bundle.io import load_bundle
    except ImportError as error:
        raise ImportError(f"export needs torch ({error}); {EXPORT_EXTRA_HINT}") from error

    return load_bundle(bundle_dir)


def _export_onnx_model(model, metadata: dict[str, Any], path: Path) -> None:
    try:
        import onnx
        import torch
    except ImportError as error:
        raise ImportError(f"ONNX export needs torch and onnx ({error}); {EXPORT_EXTRA_HINT}") from error

    height, width = metadata["input_size"]
    example = torch.zeros(1, 3, height, width)
    # The TorchScript-based exporter (dynamo=False) needs no onnxscript and
    # writes one self-contained file; models over 2 GB would need external data.
    with warnings.catch_warnings():
        # The legacy exporter warns about itself and about constant folding of shape
        # arithmetic; neither changes the graph's results, which the parity tests check.
        # Tracer warnings flag shapes and channel indices read as Python values: both are
        # fixed per bundle (only the batch axis is dynamic).
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def _import_openvino():
    from defectscope.bundle.telemetry_guard import import_without_telemetry

    try:
        return import_without_telemetry("openvino")
    except ImportError as error:
        raise ImportError(f"OpenVINO export needs the openvino package ({error}); {EXPORT_EXTRA_HINT}") from error


def _export_openvino(onnx_path: Path, xml_path: Path, precision: str, calibration_arrays: list[np.ndarray] | None = None) -> None:
    ov = _import_openvino()
    model = ov.Core().read_model(str(onnx_path))
    if precision == "int8":
        model = _quantize_int8(model, calibration_arrays or [])
    ov.save_model(model, str(xml_path), compress_to_fp16=(precision == "fp16"))


def _calibration_arrays(metadata: dict[str, Any], calibration_images) -> list[np.ndarray]:
    """Preprocess the calibration images into (1, 3, height, width) arrays for NNCF."""
    from defectscope.data.loader import iter_batches

    input_size = tuple(metadata["input_size"])
    arrays: list[np.ndarray] = []
    for batch in iter_batches(list(calibration_images), input_size, metadata["mean"], metadata["std"], batch_size=8):
        for index, message in batch.errors.items():
            logger.error("skipped calibration image %s: %s", calibration_images[index], message)
        if batch.images is not None:
            arrays.extend(np.stack([image]) for image in batch.images)
    if not arrays:
        raise ValueError("int8 export: no calibration image could be read")
    return arrays


def _quantize_int8(model, arrays: list[np.ndarray]) -> Any:
    nncf = _import_nncf()
    # NNCF logs each ignored node at INFO; defectscope logs the step itself.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    logger.info("quantizing the model to int8 on %d calibration images", len(arrays))
    dataset = nncf.Dataset(arrays)
    # Only the backbone is quantized; the head (PaDiM statistics, flows),
    # upsampling and blur stay fp32. The ONNX exporter names nodes by module
    # path, so backbone nodes start with "/backbone/".
    # NOTE: quantizing the head as well made the OpenVINO 2026.4 CPU plugin
    # crash (segmentation fault) while compiling, for some calibration sets.
    head_scope = nncf.IgnoredScope(patterns=["^/(?!backbone/).*"], validate=False)
    quantized = nncf.quantize(model, dataset, subset_size=len(arrays), ignored_scope=head_scope)
    removed = strip_head_quantizers(quantized)
    logger.debug("removed %d quantizers outside the backbone", removed)
    return quantized


def strip_head_quantizers(model) -> int:
    """Bypass every FakeQuantize that feeds no backbone operation; return how many.

    NNCF 2.x places a quantizer on the output of the final matrix product
    even though the ignored scope covers it. That quantizer rounds the anomaly
    map to 256 levels and clips it at the largest calibration value, so strong
    defects all score one ceiling value.
    """
    removed = 0
    for operation in model.get_ordered_ops():
        if operation.get_type_name() != "FakeQuantize":
            continue
        consumers = [target.get_node().get_friendly_name() for target in operation.output(0).get_target_inputs()]
        if any(name.startswith("/backbone/") for name in consumers):
            continue
        operation.output(0).replace(operation.input_value(0))
        removed += 1
    return removed


def _export_int8(model, metadata: dict[str, Any], staging: Path, xml_name: str, calibration, train_images: list[Path]) -> dict[str, Any]:
    """Write the int8 OpenVINO model; return the fields it adds to its export record.

    The head and the threshold are refitted for the int8 backbone
    (``defectscope.bundle.int8_refit``), and the refitted model is exported
    to its own ONNX file in ``staging`` before quantization.
    """
    from defectscope.bundle import int8_refit

    images = [path for path, _ in calibration]
    arrays = _calibration_arrays(metadata, images)
    refitted = int8_refit.refit_head(model, metadata, arrays, train_images, _import_nncf(), _import_openvino())
    source = staging / "int8-source.onnx"
    _export_onnx_model(refitted, metadata, source)
    _export_openvino(source, staging / xml_name, "int8", arrays)
    source.unlink()
    labels = np.array([label for _, label in calibration])
    fields: dict[str, Any] = {"calibration_images": len(arrays), "head_refit_images": len(train_images)}
    fields.update(int8_refit.calibrate(staging / xml_name, metadata, images, labels))
    return fields


def _import_nncf():
    from defectscope.bundle.telemetry_guard import import_without_telemetry

    try:
        return import_without_telemetry("nncf")
    except ImportError as error:
        raise ImportError(f"int8 export needs NNCF ({error}); pip install 'defectscope[int8]'") from error


def _record(folder: Path, names: list[str], **fields: Any) -> dict[str, Any]:
    from defectscope.features.weights import sha256_of_file

    files = {name: {"sha256": sha256_of_file(folder / name), "bytes": (folder / name).stat().st_size} for name in names}
    return {"files": files, **fields, **_versions(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _versions() -> dict[str, Any]:
    from importlib import metadata as package_metadata

    versions = {}
    for package in ("torch", "onnx", "openvino", "nncf"):
        try:
            versions[package] = package_metadata.version(package)
        except package_metadata.PackageNotFoundError:
            continue
    return {"exported_with": versions, "input": INPUT_NAME, "output": OUTPUT_NAME}


def _update_metadata(bundle_dir: Path, records: dict[str, dict[str, Any]]) -> None:
    metadata = read_metadata(bundle_dir)
    exports = dict(metadata.get("exports", {}))
    exports.update(records)
    metadata["exports"] = exports
    write_json_atomic(bundle_dir / METADATA_FILE, metadata)

