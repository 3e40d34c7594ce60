"""Save and load trained models as bundle directories.

A bundle contains ``model.safetensors`` (backbone and head tensors) and
``metadata.json`` (everything else needed to predict). Loading unpickles
nothing. Saving is atomic: files go to a hidden sibling directory that is
renamed into place last, so a save killed halfway leaves no bundle at the
target path (or leaves the previous one intact).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from defectscope.bundle.metadata import METADATA_FILE, WEIGHTS_FILE, BundleError, read_metadata, write_json_atomic
from defectscope.models.anomaly_model import AnomalyModel
from defectscope.models.factory import build_model

logger = logging.getLogger(__name__)


def save_bundle(model: AnomalyModel, metadata: dict[str, Any], bundle_dir: str | Path) -> Path:
    """Write ``model`` and ``metadata`` to ``bundle_dir`` atomically; return the path."""
    bundle_dir = Path(bundle_dir).resolve()
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle_dir.name}.saving-", dir=bundle_dir.parent))
    try:
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_file(tensors, str(staging / WEIGHTS_FILE))
        with open(staging / WEIGHTS_FILE, "rb") as handle:
            os.fsync(handle.fileno())
        # metadata.json is written last, so a staging directory without it is never a loadable bundle.
        write_json_atomic(staging / METADATA_FILE, metadata)
        _apply_umask(staging)
        _replace_directory(staging, bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved bundle %s", bundle_dir)
    return bundle_dir


def _apply_umask(directory: Path) -> None:
    """Give the bundle the permissions a plain ``mkdir`` and ``open`` would (mkdtemp makes 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_directory(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    if not (target / METADATA_FILE).exists() and any(target.iterdir()):
        raise BundleError(f"{target} exists and is not a bundle; choose another output directory")
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(new, target)
    shutil.rmtree(retired, ignore_errors=True)


def load_bundle(bundle_dir: str | Path) -> tuple[AnomalyModel, dict[str, Any]]:
    """Rebuild the PyTorch model of a bundle; return it (in eval mode) and the metadata.

    Raises ``BundleError`` for a missing or incomplete bundle.
    """
    bundle_dir = Path(bundle_dir)
    metadata = read_metadata(bundle_dir)
    weights = bundle_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{bundle_dir} is not a complete bundle: {WEIGHTS_FILE} is missing. Train again.")
    model = build_model(metadata)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"bundle {bundle_dir} does not match its metadata (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), metadata
