"""Tests for the PaDiM head: streaming statistics and Mahalanobis distances."""

from __future__ import annotations

import numpy as np
import torch

from defectscope.models.padim import Padim, concat_feature_maps


def _random_levels(batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    # Two levels at strides 1 and 2 of a 4x4 grid, with a large offset to expose cancellation.
    return [
        torch.randn(batch, 5, 4, 4, generator=generator) * 0.3 + 40.0,
        torch.randn(batch, 3, 2, 2, generator=generator) + 5.0,
    ]


def _fit(batches: list[list[torch.Tensor]], regularization: float = 0.01) -> Padim:
    padim = Padim(channels=8, feature_size=(4, 4), n_features=6, seed=3, regularization=regularization)
    padim.fit(batches)
    return padim


def test_streaming_matches_direct_statistics():
    generator = torch.Generator().manual_seed(0)
    batches = [_random_levels(n, generator) for n in (4, 7, 1, 9)]
    padim = _fit(batches)

    embedding = torch.cat([padim.embed(levels) for levels in batches]).double().numpy()  # (n, positions, d)
    mean = embedding.mean(axis=0)
    for position in (0, 5, 15):
        covariance = np.cov(embedding[:, position, :], rowvar=False) + 0.01 * np.eye(6)
        expected = np.linalg.inv(covariance)
        actual = padim.inv_covariance[position].double().numpy()
        assert np.allclose(padim.mean[position].double().numpy(), mean[position], rtol=1e-6)
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_batch_split_does_not_change_fit():
    generator = torch.Generator().manual_seed(1)
    levels = _random_levels(12, generator)
    whole = _fit([levels])
    split = _fit([[level[:5] for level in levels], [level[5:] for level in levels]])
    assert torch.allclose(whole.mean, split.mean, rtol=1e-6)
    assert torch.allclose(whole.inv_covariance, split.inv_covariance, rtol=1e-3, atol=1e-3)


def test_anomaly_map_is_mahalanobis_distance():
    generator = torch.Generator().manual_seed(2)
    padim = _fit([_random_levels(10, generator)])
    query = _random_levels(2, generator)

    distances = padim.anomaly_map(query)

    embedding = padim.embed(query).double()
    for image in range(2):
        for position in (0, 9):
            delta = embedding[image, position] - padim.mean[position].double()
            expected = torch.sqrt(delta @ padim.inv_covariance[position].double() @ delta)
            assert abs(distances[image].flatten()[position].item() - expected.item()) < 1e-3 * expected.item()


def test_feature_subset_is_seeded_and_stored():
    first = Padim(channels=50, feature_size=(2, 2), n_features=10, seed=7)
    second = Padim(channels=50, feature_size=(2, 2), n_features=10, seed=7)
    other = Padim(channels=50, feature_size=(2, 2), n_features=10, seed=8)
    assert torch.equal(first.feature_indices, second.feature_indices)
    assert not torch.equal(first.feature_indices, other.feature_indices)
    assert "feature_indices" in first.state_dict()


def test_training_memory_independent_of_image_count():
    generator = torch.Generator().manual_seed(4)
    padim = Padim(channels=8, feature_size=(4, 4), n_features=6)
    padim.update(_random_levels(2, generator))
    sizes = (padim._sum.numel(), padim._outer_sum.numel())
    for _ in range(20):
        padim.update(_random_levels(8, generator))
    assert (padim._sum.numel(), padim._outer_sum.numel()) == sizes


def test_fit_rejects_single_image():
    generator = torch.Generator().manual_seed(5)
    padim = Padim(channels=8, feature_size=(4, 4), n_features=6)
    padim.update(_random_levels(1, generator))
    try:
        padim.finalize()
    except ValueError as error:
        assert "at least 2" in str(error)
    else:
        raise AssertionError("finalize accepted one training image")


def test_concat_upsamples_to_finest_level():
    levels = [torch.zeros(1, 2, 8, 8), torch.ones(1, 3, 4, 4)]
    stacked = concat_feature_maps(levels)
    assert stacked.shape == (1, 5, 8, 8)
    assert stacked[:, 2:].min().item() == 1.0
