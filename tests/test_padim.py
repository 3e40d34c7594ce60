"""Tests for the PaDiM head: streaming statistics and Mahalanobis distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectscope.models.padim import Padim, concat_feature_maps


def _random_levels(batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    # Two levels at strides 1 and 2 of a 4x4 grid, with a large offset to expose cancellation.
    return [
        torch.randn(batch, 5, 4, 4, generator=generator) * 0.3 + 40.0,
        torch.randn(batch, 3, 2, 2, generator=generator) + 5.0,
    ]


def _fit(batches: list[list[torch.Tensor]], regularization: float = 0.01, block: int = 1) -> Padim:
    padim = Padim(channels=8, feature_size=(4, 4), n_features=6, seed=3, regularization=regularization, covariance_block=block)
    padim.fit(batches)
    return padim


def _by_position(padim: Padim, levels: list[torch.Tensor]) -> torch.Tensor:
    """Return the embedding as (batch, positions, d), positions in row-major order."""
    return padim.embed(levels).flatten(2).transpose(1, 2)


def _block_of(position: int, block: int, width: int = 4) -> int:
    """Return the covariance block that contains a row-major position of a 4x4 map."""
    columns = -(-width // block)
    return (position // width // block) * columns + (position % width) // block


def test_streaming_matches_direct_statistics():
    generator = torch.Generator().manual_seed(0)
    batches = [_random_levels(n, generator) for n in (4, 7, 1, 9)]
    padim = _fit(batches)

    embedding = torch.cat([_by_position(padim, levels) for levels in batches]).double().numpy()  # (n, positions, d)
    mean = embedding.mean(axis=0)
    for position in (0, 5, 15):
        covariance = np.cov(embedding[:, position, :], rowvar=False) + 0.01 * np.eye(6)
        expected = np.linalg.inv(covariance)
        actual = padim.inv_covariance[position].double().numpy()
        assert np.allclose(padim.mean[position].double().numpy(), mean[position], rtol=1e-6)
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("block", [2, 3, 4])
def test_block_covariance_pools_position_covariances(block):
    # Block 3 on a 4x4 map leaves cut-short edge blocks (3x1, 1x3, 1x1).
    generator = torch.Generator().manual_seed(6)
    batches = [_random_levels(n, generator) for n in (5, 8)]
    padim = _fit(batches, block=block)

    embedding = torch.cat([_by_position(padim, levels) for levels in batches]).double().numpy()
    columns = -(-4 // block)
    assert padim.inv_covariance.shape == (columns * columns, 6, 6)
    assert np.allclose(padim.mean.double().numpy(), embedding.mean(axis=0), rtol=1e-6)
    for index in range(columns * columns):
        members = [position for position in range(16) if _block_of(position, block) == index]
        pooled = np.mean([np.cov(embedding[:, position, :], rowvar=False) for position in members], axis=0)
        expected = np.linalg.inv(pooled + 0.01 * np.eye(6))
        actual = padim.inv_covariance[index].double().numpy()
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_batch_split_does_not_change_fit():
    generator = torch.Generator().manual_seed(1)
    levels = _random_levels(12, generator)
    whole = _fit([levels])
    split = _fit([[level[:5] for level in levels], [level[5:] for level in levels]])
    assert torch.allclose(whole.mean, split.mean, rtol=1e-6)
    assert torch.allclose(whole.inv_covariance, split.inv_covariance, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("block", [1, 3])
def test_anomaly_map_is_mahalanobis_distance(block):
    generator = torch.Generator().manual_seed(2)
    padim = _fit([_random_levels(10, generator)], block=block)
    query = _random_levels(2, generator)

    distances = padim.anomaly_map(query)

    assert distances.shape == (2, 4, 4)
    embedding = _by_position(padim, query).double()
    for image in range(2):
        for position in (0, 9, 15):
            delta = embedding[image, position] - padim.mean[position].double()
            expected = torch.sqrt(delta @ padim.inv_covariance[_block_of(position, block)].double() @ delta)
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


def test_embedding_is_channel_subset_of_concatenation():
    generator = torch.Generator().manual_seed(9)
    levels = [torch.randn(2, 5, 4, 4, generator=generator), torch.randn(2, 3, 2, 2, generator=generator), torch.randn(2, 4, 1, 1, generator=generator)]
    for seed in range(30):  # some seeds leave the finest level without a channel
        padim = Padim(channels=12, feature_size=(4, 4), n_features=3, seed=seed)
        expected = concat_feature_maps(levels)[:, padim.feature_indices]
        assert torch.equal(padim.embed(levels), expected)
