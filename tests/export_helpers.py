"""Small trained bundles shared by the export and runtime-parity tests.

Each builder trains once per test session (``functools.cache``) into a
temporary folder, so both test modules reuse the same bundle.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import tempfile
from pathlib import Path

from conftest import BOTTLE

INPUT_SIZE = 128
N_TRAIN = 20
N_CALIBRATION = 10

has_cflow = importlib.util.find_spec("defectscope.models.cflow") is not None
has_nncf = importlib.util.find_spec("nncf") is not None


def bottle_test_images() -> list[Path]:
    """Every image of the bottle test split (83 in MVTec AD), sorted."""
    return sorted((BOTTLE / "test").glob("*/*.png"))


@functools.cache
def trained_bundle(model: str) -> Path:
    """Train ``model`` at 128 px on 20 bottle normals (10 more calibrate), export ONNX and OpenVINO fp32/fp16; return the bundle."""
    from defectscope.bundle.export import export_bundle
    from defectscope.data.datasets import read_mvtec
    from defectscope.training import TrainConfig, train

    normals = [sample for sample in read_mvtec(BOTTLE) if sample.split == "train"]
    samples = normals[:N_TRAIN] + [dataclasses.replace(s, split="calibration") for s in normals[N_TRAIN : N_TRAIN + N_CALIBRATION]]
    options = {"n_features": 50} if model == "padim" else {"epochs": 1, "coupling_blocks": 2}
    config = TrainConfig(model=model, input_size=INPUT_SIZE, batch_size=10, model_options=options)
    output = Path(tempfile.mkdtemp(prefix=f"defectscope-{model}-"))
    result = train(samples, output / "run", config, progress=False)
    export_bundle(result.bundle_dir, "all", ["fp32", "fp16"])
    return result.bundle_dir
