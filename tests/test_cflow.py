"""Tests for the CFLOW-AD head on real MVTec AD bottle images at a tiny input size."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import BOTTLE, needs_bottle
from defectscope.bundle.io import load_bundle, save_bundle
from defectscope.bundle.metadata import FORMAT_VERSION
from defectscope.data.datasets import read_mvtec
from defectscope.data.loader import iter_batches
from defectscope.features.backbone import Backbone
from defectscope.models.anomaly_model import AnomalyModel
from defectscope.models.cflow import Cflow, ConditionalFlow, positional_encoding
from defectscope.models.factory import build_head
from defectscope.training import TrainConfig, train

INPUT_SIZE = (64, 64)
TINY_OPTIONS = {"epochs": 1, "coupling_blocks": 2, "condition_dims": 16, "fiber_batch_size": 256, "fibers_per_image": 32, "seed": 3}



@pytest.fixture(scope="module")
def backbone() -> Backbone:
    network = Backbone("tf_efficientnet_lite0")
    network.load_pretrained()
    return network


@pytest.fixture(scope="module")
def bottle_images(backbone: Backbone) -> np.ndarray:
    """Preprocessed bottle images (train normals first, then test images): (40, 3, 64, 64)."""
    samples = read_mvtec(BOTTLE)
    paths = [s.image_path for s in samples if s.split == "train"][:8] + [s.image_path for s in samples if s.split == "test"][::2][:32]
    batches = list(iter_batches(paths, INPUT_SIZE, backbone.mean, backbone.std, batch_size=len(paths)))
    return batches[0].images


def fit_head(backbone: Backbone, images: np.ndarray) -> Cflow:
    """Fit a tiny CFLOW head on the first 8 images, fed as two feature batches."""
    head = build_head("cflow", backbone, INPUT_SIZE, dict(TINY_OPTIONS))
    features = [backbone(torch.from_numpy(images[start : start + 4])) for start in (0, 4)]
    head.fit(iter(features), progress=False)
    return head


@pytest.fixture(scope="module")
def trained_head(backbone: Backbone, bottle_images: np.ndarray) -> Cflow:
    return fit_head(backbone, bottle_images)


def test_positional_encoding_shape_and_range():
    encoding = positional_encoding(3, 5, 16)

    assert encoding.shape == (15, 16)
    assert encoding.abs().max() <= 1.0
    assert not torch.equal(encoding[0], encoding[1])
    assert not torch.equal(encoding[0], encoding[5])


def test_positional_encoding_rejects_bad_dims():
    with pytest.raises(ValueError, match="multiple of 4"):
        positional_encoding(4, 4, 10)


def test_flow_log_det_matches_autograd_jacobian():
    torch.manual_seed(0)
    flow = ConditionalFlow(6, 8, blocks=3, clamp_alpha=1.9, generator=torch.Generator().manual_seed(0))
    for parameter in flow.parameters():
        torch.nn.init.normal_(parameter, std=0.3)  # leave the identity start behind
    fiber = torch.randn(6, dtype=torch.float64)
    encoding = torch.randn(1, 8, dtype=torch.float64)
    flow = flow.double()

    def latent(x: torch.Tensor) -> torch.Tensor:
        z = x[None, None, :]
        for block in flow.blocks:
            z, _ = block(z, block.condition_layer(encoding))
        return z[0, 0]

    jacobian = torch.autograd.functional.jacobian(latent, fiber)
    expected = (0.5 * latent(fiber).square().sum() - torch.linalg.slogdet(jacobian).logabsdet) / 6
    nll = flow(fiber[None, None, :], encoding)[0, 0]

    assert torch.allclose(nll, expected, rtol=1e-9, atol=1e-9)


def test_cflow_rejects_invalid_options():
    with pytest.raises(ValueError, match="coupling_blocks"):
        Cflow([24, 40], [4, 8], (64, 64), coupling_blocks=0)
    with pytest.raises(ValueError, match="fiber_batch_size"):
        Cflow([24, 40], [4, 8], (64, 64), fiber_batch_size=0)
    with pytest.raises(ValueError, match="level_weighting"):
        Cflow([24, 40], [4, 8], (64, 64), level_weighting="max")


def test_options_rebuild_same_architecture():
    head = Cflow([24, 40, 112], [4, 8, 16], (64, 64), **TINY_OPTIONS)
    rebuilt = Cflow([24, 40, 112], [4, 8, 16], (64, 64), **head.options())

    assert rebuilt.options() == head.options()
    assert head.state_dict().keys() == rebuilt.state_dict().keys()
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, rebuilt.state_dict()[name]), name


@needs_bottle
def test_fit_rejects_single_image(backbone, bottle_images):
    head = build_head("cflow", backbone, INPUT_SIZE, dict(TINY_OPTIONS))
    features = backbone(torch.from_numpy(bottle_images[:1]))

    with pytest.raises(ValueError, match="at least 2 training images"):
        head.fit(iter([features]), progress=False)


@needs_bottle
def test_fit_is_deterministic_under_seed(backbone, bottle_images, trained_head):
    first = trained_head.state_dict()
    second = fit_head(backbone, bottle_images).state_dict()

    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


@needs_bottle
def test_fit_changes_flow_weights(backbone, trained_head):
    untrained = build_head("cflow", backbone, INPUT_SIZE, dict(TINY_OPTIONS)).state_dict()
    trained = trained_head.state_dict()

    assert not torch.equal(untrained["flows.0.blocks.0.output_layer.weight"], trained["flows.0.blocks.0.output_layer.weight"])


@needs_bottle
def test_anomaly_map_shape(backbone, bottle_images, trained_head):
    maps = trained_head.anomaly_map(backbone(torch.from_numpy(bottle_images[8:10])))

    assert maps.shape == (2, 16, 16)
    assert torch.isfinite(maps).all()


def per_level_nll(head: Cflow, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Compute each level's NLL per channel, upsampled to the first level's grid: (batch, height_0, width_0) each."""
    maps = []
    for level, (flow, features) in enumerate(zip(head.flows, feature_maps)):
        encoding, mean, std = head._level_buffers(level)
        fibers = (features.flatten(2).transpose(1, 2) - mean) / std
        nll = flow(fibers, encoding).reshape(features.shape[0], 1, *features.shape[-2:])
        nll = torch.nn.functional.interpolate(nll, size=head.feature_sizes[0], mode="bilinear", align_corners=False)
        maps.append(nll[:, 0])
    return maps


@needs_bottle
@pytest.mark.parametrize("level_weighting", ["channels", "equal"])
def test_anomaly_map_weights_levels(backbone, bottle_images, trained_head, level_weighting):
    head = Cflow([24, 40, 112], [4, 8, 16], INPUT_SIZE, **{**trained_head.options(), "level_weighting": level_weighting})
    head.load_state_dict(trained_head.state_dict())
    head.eval()
    with torch.no_grad():
        feature_maps = backbone(torch.from_numpy(bottle_images[8:10]))
        levels = per_level_nll(head, feature_maps)
        maps = head.anomaly_map(feature_maps)

    if level_weighting == "channels":
        expected = (24 * levels[0] + 40 * levels[1] + 112 * levels[2]) / 176
    else:
        expected = (levels[0] + levels[1] + levels[2]) / 3
    assert torch.allclose(maps, expected, rtol=1e-5, atol=1e-6)


@needs_bottle
def test_score_independent_of_batch(backbone, bottle_images, trained_head):
    model = AnomalyModel(backbone, trained_head, INPUT_SIZE).eval()
    test_images = torch.from_numpy(bottle_images[8:40])
    assert test_images.shape[0] == 32
    batch_scores = model(test_images).amax(dim=(1, 2))

    # Scoring all 32 alone would dominate the test time, so check the first, a middle and the last image.
    for index in (0, 13, 31):
        alone_score = model(test_images[index : index + 1]).amax(dim=(1, 2))[0]
        assert torch.allclose(alone_score, batch_scores[index], rtol=1e-5, atol=0), index


@needs_bottle
def test_bundle_round_trip_gives_identical_maps(tmp_path, backbone, bottle_images, trained_head):
    model = AnomalyModel(backbone, trained_head, INPUT_SIZE, sigma=1.0).eval()
    metadata = {
        "format_version": FORMAT_VERSION,
        "model": "cflow",
        "model_options": model.head.options(),
        "backbone": {"name": backbone.model_name, "out_indices": list(backbone.out_indices)},
        "input_size": list(INPUT_SIZE),
        "sigma": 1.0,
    }
    bundle_dir = save_bundle(model, metadata, tmp_path / "bundle")

    loaded, _ = load_bundle(bundle_dir)
    images = torch.from_numpy(bottle_images[8:12])

    assert torch.equal(loaded(images), model(images))


@needs_bottle
def test_train_writes_head_options_to_metadata(tmp_path):
    samples = read_mvtec(BOTTLE)
    train_samples = [s for s in samples if s.split == "train"][:8]
    test_samples = [s for s in samples if s.split == "test"][::20]
    config = TrainConfig(
        model="cflow", input_size=INPUT_SIZE[0], sigma=1.0, batch_size=8, calibration_fraction=0.25,
        calibration_min=2, model_options=dict(TINY_OPTIONS),
    )
    result = train(train_samples + test_samples, tmp_path, config, progress=False)

    _, metadata = load_bundle(result.bundle_dir)
    defaults = Cflow([24], [4], INPUT_SIZE).options()
    assert metadata["model_options"] == {**defaults, **TINY_OPTIONS}
    assert result.evaluation is not None


@needs_bottle
def test_onnx_export_matches_torch(tmp_path, backbone, bottle_images, trained_head):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = AnomalyModel(backbone, trained_head, INPUT_SIZE).eval()
    image = torch.from_numpy(bottle_images[8:9])
    path = tmp_path / "cflow.onnx"

    torch.onnx.export(
        model, (image,), str(path), opset_version=17, dynamo=False,
        input_names=["images"], output_names=["maps"], dynamic_axes={"images": {0: "batch"}, "maps": {0: "batch"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {"images": image.numpy()})[0]
    expected = model(image).numpy()

    assert exported.shape == expected.shape
    np.testing.assert_allclose(exported, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
