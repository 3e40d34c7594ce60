"""Bundle layout and metadata, readable without torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
ONNX_FILE = "model.onnx"
OPENVINO_XML = "model.xml"


class BundleError(ValueError):
    """Raised when a bundle directory is missing, incomplete or of an unknown format."""


def read_metadata(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and check ``metadata.json`` of a bundle.

    Raises
    ------
    BundleError
        If the directory or its metadata is missing, unreadable, or written by
        a newer format version.
    """
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / METADATA_FILE
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle not found: {bundle_dir}. Pass the directory that `defectscope train` wrote.")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a complete bundle: {METADATA_FILE} is missing. Train or export again.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(f"invalid bundle metadata {path}: {error}") from error
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {bundle_dir} has format version {version!r}; this defectscope reads version {FORMAT_VERSION}. "
            "Retrain the model or install the defectscope version that wrote it."
        )
    return metadata


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
