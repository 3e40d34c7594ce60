"""Tests for bundle save/load: round trip, atomic save, no pickles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectscope.bundle.metadata import FORMAT_VERSION
from defectscope.bundle import io as bundle_io
from defectscope.bundle.io import load_bundle, save_bundle
from defectscope.bundle.metadata import BundleError, read_metadata
from defectscope.features.backbone import Backbone
from defectscope.models.anomaly_model import AnomalyModel
from defectscope.models.padim import Padim


def _tiny_model() -> tuple[AnomalyModel, dict]:
    backbone = Backbone("tf_efficientnet_lite0")
    backbone.load_pretrained()
    head = Padim(sum(backbone.channels), (16, 16), n_features=20, seed=1)
    generator = torch.Generator().manual_seed(0)
    head.fit([backbone(torch.randn(4, 3, 64, 64, generator=generator)) for _ in range(2)])
    metadata = {
        "format_version": FORMAT_VERSION,
        "model": "padim",
        "model_options": {"n_features": 20, "seed": 1},
        "backbone": {"name": "tf_efficientnet_lite0", "out_indices": [1, 2, 3]},
        "input_size": [64, 64],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "sigma": 2.0,
        "normalization": {"threshold": 5.0, "low": 1.0},
    }
    return AnomalyModel(backbone, head, (64, 64), 2.0).eval(), metadata


def test_round_trip_gives_identical_maps(tmp_path):
    model, metadata = _tiny_model()
    images = torch.randn(2, 3, 64, 64)
    save_bundle(model, metadata, tmp_path / "bundle")
    loaded, loaded_metadata = load_bundle(tmp_path / "bundle")
    assert torch.equal(model(images), loaded(images))
    assert loaded_metadata["normalization"] == metadata["normalization"]


def test_bundle_readable_by_others(tmp_path):
    import os
    import stat

    model, metadata = _tiny_model()
    previous = os.umask(0o022)
    try:
        save_bundle(model, metadata, tmp_path / "bundle")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "bundle" / "model.safetensors").stat().st_mode) == 0o644


def test_bundle_holds_only_tensors_and_json(tmp_path):
    model, metadata = _tiny_model()
    save_bundle(model, metadata, tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["metadata.json", "model.safetensors"]
    json.loads((tmp_path / "bundle" / "metadata.json").read_text())


def test_interrupted_save_leaves_no_bundle(tmp_path, monkeypatch):
    model, metadata = _tiny_model()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed halfway")

    monkeypatch.setattr(bundle_io, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(model, metadata, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_previous_bundle(tmp_path, monkeypatch):
    model, metadata = _tiny_model()
    save_bundle(model, metadata, tmp_path / "bundle")
    monkeypatch.setattr(bundle_io, "_replace_directory", lambda new, target: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_bundle(model, {**metadata, "sigma": 3.0}, tmp_path / "bundle")
    assert read_metadata(tmp_path / "bundle")["sigma"] == 2.0


def test_directory_without_metadata_rejected(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"")
    with pytest.raises(BundleError, match="metadata.json is missing"):
        load_bundle(tmp_path / "half")


def test_missing_bundle_named(tmp_path):
    with pytest.raises(BundleError, match="nowhere"):
        read_metadata(tmp_path / "nowhere")


def test_newer_format_rejected(tmp_path):
    model, metadata = _tiny_model()
    save_bundle(model, {**metadata, "format_version": 99}, tmp_path / "bundle")
    with pytest.raises(BundleError, match="format version 99"):
        load_bundle(tmp_path / "bundle")


def test_save_refuses_to_replace_other_folder(tmp_path):
    model, metadata = _tiny_model()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("user file")
    with pytest.raises(BundleError, match="not a bundle"):
        save_bundle(model, metadata, tmp_path / "data")
    assert (tmp_path / "data" / "keep.txt").exists()
    assert np.all([not p.name.startswith(".data") for p in tmp_path.iterdir()])
