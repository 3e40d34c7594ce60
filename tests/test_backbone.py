"""Tests for backbones and pretrained-weight resolution."""

from __future__ import annotations

import timm
import torch

import pytest

from defectscope.features.backbone import Backbone
from defectscope.features.weights import WeightsNotFoundError, sha256_of_file


def _isolate_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def test_lite0_loads_offline_package_weights():
    backbone = Backbone("tf_efficientnet_lite0")
    resolved = backbone.load_pretrained()
    assert resolved.source.endswith(".pth")
    assert resolved.sha256 == sha256_of_file(resolved.source)
    # Pretrained batch-norm statistics differ from the fresh-initialization defaults (zeros and ones).
    assert not torch.allclose(backbone.model.bn1.running_mean, torch.zeros_like(backbone.model.bn1.running_mean))


def test_lite0_feature_strides_and_channels():
    backbone = Backbone("tf_efficientnet_lite0")
    maps = backbone(torch.zeros(2, 3, 64, 64))
    assert backbone.strides == [4, 8, 16]
    assert [m.shape[1] for m in maps] == backbone.channels
    assert [m.shape[-1] for m in maps] == [16, 8, 4]


def test_backbone_stays_frozen_in_train_mode():
    backbone = Backbone("tf_efficientnet_lite0")
    backbone.train()
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.parameters())


def test_resnet18_loads_explicit_checkpoint(tmp_path, monkeypatch):
    _isolate_caches(monkeypatch, tmp_path)
    reference = timm.create_model("resnet18", pretrained=False)
    checkpoint = tmp_path / "resnet18-custom.pth"
    torch.save(reference.state_dict(), checkpoint)

    backbone = Backbone("resnet18")
    resolved = backbone.load_pretrained(checkpoint)

    assert backbone.layer_names == ["layer1", "layer2", "layer3"]
    assert resolved.sha256 == sha256_of_file(checkpoint)
    assert torch.equal(backbone.model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_resnet18_loads_from_torch_cache(tmp_path, monkeypatch):
    _isolate_caches(monkeypatch, tmp_path)
    reference = timm.create_model("resnet18", pretrained=False)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    resolved = Backbone("resnet18").load_pretrained()

    assert resolved.source == str(cached)


def test_resnet18_loads_safetensors_from_hf_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    _isolate_caches(monkeypatch, tmp_path)
    reference = timm.create_model("resnet18", pretrained=False)
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))

    resolved = Backbone("resnet18").load_pretrained()

    assert resolved.source.endswith("model.safetensors")


def test_missing_weights_error_says_how_to_supply(tmp_path, monkeypatch):
    _isolate_caches(monkeypatch, tmp_path)
    with pytest.raises(WeightsNotFoundError) as raised:
        Backbone("resnet18").load_pretrained()
    assert "--weights" in str(raised.value)
    assert "resnet18" in str(raised.value)


def test_wrong_checkpoint_rejected(tmp_path, monkeypatch):
    _isolate_caches(monkeypatch, tmp_path)
    checkpoint = tmp_path / "lite0.pth"
    torch.save(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), checkpoint)
    with pytest.raises(WeightsNotFoundError, match="do not fit"):
        Backbone("resnet18").load_pretrained(checkpoint)


class _NotTensors:
    value = 1


def test_pickled_object_checkpoint_rejected(tmp_path):
    checkpoint = tmp_path / "pickled.pth"
    torch.save({"state_dict": _NotTensors()}, checkpoint)
    with pytest.raises(WeightsNotFoundError, match=str(checkpoint.name)):
        Backbone("resnet18").load_pretrained(checkpoint)


def test_missing_weights_file_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nothing.pth"):
        Backbone("resnet18").load_pretrained(tmp_path / "nothing.pth")
