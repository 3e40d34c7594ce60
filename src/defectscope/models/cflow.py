"""CFLOW-AD: one conditional normalizing flow per feature level, scored by negative log-likelihood.

Gudovskiy et al., "CFLOW-AD: Real-Time Unsupervised Anomaly Detection with
Localization via Conditional Normalizing Flows", WACV 2022.

Each feature level (strides 4, 8 and 16 by default) gets its own flow that maps
a feature vector at one position (a *fiber*, ``channels`` values) to a standard
normal vector. Every flow is a stack of affine coupling blocks. Each block
permutes the channels with a fixed, seeded permutation, keeps the first half
and scales and shifts the second half by ``s`` and ``t``. A small network
(the *subnet*) computes ``s`` and ``t`` from the first half and from a 2-D
sinusoidal encoding of the fiber's position. The raw scale is soft-clamped
with the arctangent, ``s = alpha * 2 / pi * atan(s_raw / alpha)``, so that
``|s| < alpha`` (``clamp_alpha``, 1.9 by default) and ``exp(s)`` stays finite.

The blocks are written here instead of taken from FrEIA (PyPI ``freia`` 0.2).
FrEIA 0.2 does run with torch 2.14, and its ``AllInOneBlock`` does export to
ONNX. Still, its permutations come from NumPy's global random state and its
last release is from 2022. A block of our own also lets the subnet split its
first layer into a fiber part and a position part. The position part depends only on the
position, so it is computed once per position and shared by every image in a
batch (at inference) or gathered per fiber (in training).

Training caches the frozen backbone's features once (float16) and then runs
the flows over the cached fibers for ``epochs`` epochs, so the backbone runs
once per training image, not once per epoch.

Anomaly map rule: per level, the negative log-likelihood per channel of a
fiber, ``(0.5 * ||z||^2 - log|det J|) / channels`` (the constant
``0.5 * log(2 pi)`` is left out), is computed at every position and upsampled
bilinearly to the first level's resolution. With ``level_weighting="channels"``
(the default) the levels are averaged with weights proportional to their
channel counts. If the levels are treated as independent, that average is the
negative log-likelihood of all levels' fibers stacked into one vector, divided
by its length. ``"equal"`` averages the levels with equal weights.
Every value depends only on its own image, so an image scores the same alone
and inside any batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectscope.progress import progress_bar

logger = logging.getLogger(__name__)

LEVEL_WEIGHTINGS = ("channels", "equal")


def positional_encoding(height: int, width: int, dims: int) -> torch.Tensor:
    """Return the 2-D sinusoidal encoding of a grid: (height * width, dims), row-major positions.

    The first ``dims / 2`` values encode the column and the rest the row, each
    as sines and cosines of ``position / 10000 ** (2 i / (dims / 2))``.
    Raises ``ValueError`` unless ``dims`` is a positive multiple of 4.
    """
    if dims <= 0 or dims % 4 != 0:
        raise ValueError(f"invalid condition_dims {dims}: expected a positive multiple of 4")
    quarter = dims // 4
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) * 2 / (dims // 2))
    rows = torch.arange(height, dtype=torch.float64)[:, None] * frequencies  # (height, quarter)
    columns = torch.arange(width, dtype=torch.float64)[:, None] * frequencies  # (width, quarter)
    column_code = torch.cat([columns.sin(), columns.cos()], dim=1)  # (width, dims / 2)
    row_code = torch.cat([rows.sin(), rows.cos()], dim=1)  # (height, dims / 2)
    grid = torch.cat(
        [column_code[None, :, :].expand(height, -1, -1), row_code[:, None, :].expand(-1, width, -1)],
        dim=2,
    )  # (height, width, dims)
    return grid.reshape(height * width, dims).float()


def soft_clamp(raw_scale: torch.Tensor, alpha: float) -> torch.Tensor:
    """Squash log-scales smoothly into (-alpha, alpha): ``alpha * 2 / pi * atan(raw / alpha)``."""
    return (2.0 * alpha / math.pi) * torch.atan(raw_scale / alpha)


class CouplingBlock(nn.Module):
    """Fixed channel permutation followed by a conditional affine coupling.

    ``forward(fibers, condition_bias)`` maps fibers (..., channels) to
    (..., channels) and returns the log-determinant of the Jacobian (...,).
    ``condition_bias`` is ``condition_layer(encoding)`` for each fiber's
    position, shaped so that it broadcasts against (..., hidden).
    """

    def __init__(self, channels: int, condition_dims: int, clamp_alpha: float, permutation: torch.Tensor) -> None:
        super().__init__()
        # The first (passive) half passes unchanged and conditions the scaling of the second (active) half.
        self.passive_channels = channels // 2
        active_channels = channels - self.passive_channels
        # Subnet width as in CFLOW-AD: twice the subnet's input size.
        hidden = 2 * (self.passive_channels + condition_dims)
        self.clamp_alpha = float(clamp_alpha)
        self.input_layer = nn.Linear(self.passive_channels, hidden)
        self.condition_layer = nn.Linear(condition_dims, hidden, bias=False)
        self.output_layer = nn.Linear(hidden, 2 * active_channels)
        # A zero output layer makes every block start as the identity map.
        nn.init.zeros_(self.output_layer.weight)
        nn.init.zeros_(self.output_layer.bias)
        self.register_buffer("permutation", permutation.clone())

    def forward(self, fibers: torch.Tensor, condition_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fibers = fibers.index_select(-1, self.permutation)
        passive, active = fibers[..., : self.passive_channels], fibers[..., self.passive_channels :]

        hidden = F.relu(self.input_layer(passive) + condition_bias)
        raw_scale, shift = self.output_layer(hidden).chunk(2, dim=-1)
        scale = soft_clamp(raw_scale, self.clamp_alpha)

        active = active * torch.exp(scale) + shift
        return torch.cat([passive, active], dim=-1), scale.sum(dim=-1)


class ConditionalFlow(nn.Module):
    """A stack of ``CouplingBlock`` s for one feature level, mapping fibers to N(0, I)."""

    def __init__(self, channels: int, condition_dims: int, blocks: int, clamp_alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.channels = channels
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, condition_dims, clamp_alpha, torch.randperm(channels, generator=generator)) for _ in range(blocks)
        )

    def forward(self, fibers: torch.Tensor, encoding: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Return the negative log-likelihood per channel of each fiber.

        Parameters
        ----------
        fibers:
            Standardized fibers, (batch, positions, channels) with ``encoding``
            (positions, condition_dims) at inference, or (fibers, channels)
            with ``positions`` (fibers,) indexing rows of ``encoding`` in training.

        Returns
        -------
        torch.Tensor
            ``(0.5 * ||z||^2 - log|det J|) / channels``, shaped like ``fibers`` without the last axis.
        """
        log_det = torch.zeros_like(fibers[..., 0])
        latent = fibers
        if positions is not None and positions.numel() < encoding.shape[0]:
            # Fewer fibers than grid positions: projecting each fiber's own encoding row is cheaper.
            encoding, positions = encoding.index_select(0, positions), None
        for block in self.blocks:
            condition_bias = block.condition_layer(encoding)  # (positions, hidden)
            if positions is not None:
                condition_bias = condition_bias.index_select(0, positions)  # (fibers, hidden)
            latent, block_log_det = block(latent, condition_bias)
            log_det = log_det + block_log_det
        return (0.5 * latent.square().sum(dim=-1) - log_det) / self.channels


class Cflow(nn.Module):
    """CFLOW-AD head: conditional normalizing flows over cached backbone features.

    Parameters
    ----------
    channels:
        Channels of each feature level, e.g. ``[24, 40, 112]``.
    strides:
        Stride of each feature level relative to the input, e.g. ``[4, 8, 16]``.
    input_size:
        (height, width) of the model input in pixels.
    epochs:
        Passes over the cached training fibers.
    coupling_blocks:
        Coupling blocks per flow.
    clamp_alpha:
        Bound of the soft-clamped log-scale of each coupling.
    condition_dims:
        Size of the positional encoding fed to every subnet (a multiple of 4).
    fiber_batch_size:
        Fibers per optimizer step.
    lr:
        Peak learning rate of Adam.
    warmup_fraction:
        Share of each flow's steps over which the learning rate rises linearly
        from 0 to ``lr``; a cosine decay to 0 follows.
    fibers_per_image:
        Maximum fibers per image and level used in one epoch, drawn at random
        positions anew each epoch; 0 uses every fiber.
    level_weighting:
        How the per-level maps are combined: ``"channels"`` weights each level
        by its share of all channels, ``"equal"`` weights the levels equally.
        With equal weights the first level (fewest channels, noisiest
        per-channel NLL) sets most image scores.
    seed:
        Seed of the initial weights, permutations and fiber sampling.
    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        input_size: Sequence[int],
        epochs: int = 3,
        coupling_blocks: int = 8,
        clamp_alpha: float = 1.9,
        condition_dims: int = 128,
        fiber_batch_size: int = 1024,
        lr: float = 1e-3,
        warmup_fraction: float = 0.1,
        fibers_per_image: int = 256,
        level_weighting: str = "channels",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_options(channels, strides, input_size, epochs, coupling_blocks, clamp_alpha, fiber_batch_size, lr, warmup_fraction, fibers_per_image)
        if level_weighting not in LEVEL_WEIGHTINGS:
            raise ValueError(f"invalid CFLOW option level_weighting={level_weighting!r}: expected one of {', '.join(LEVEL_WEIGHTINGS)}")
        self.channels = [int(c) for c in channels]
        self.strides = [int(s) for s in strides]
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.feature_sizes = [(self.input_size[0] // s, self.input_size[1] // s) for s in self.strides]
        self.epochs = int(epochs)
        self.coupling_blocks = int(coupling_blocks)
        self.clamp_alpha = float(clamp_alpha)
        self.condition_dims = int(condition_dims)
        self.fiber_batch_size = int(fiber_batch_size)
        self.lr = float(lr)
        self.warmup_fraction = float(warmup_fraction)
        self.fibers_per_image = int(fibers_per_image)
        self.level_weighting = level_weighting
        self.seed = int(seed)
        if level_weighting == "channels":
            self.level_weights = [c / sum(self.channels) for c in self.channels]
        else:
            self.level_weights = [1.0 / len(self.channels)] * len(self.channels)

        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.flows = nn.ModuleList(
                ConditionalFlow(c, self.condition_dims, self.coupling_blocks, self.clamp_alpha, generator) for c in self.channels
            )
        for level, ((height, width), level_channels) in enumerate(zip(self.feature_sizes, self.channels)):
            # The encoding follows from the options, so it is rebuilt on load instead of stored.
            self.register_buffer(f"encoding_{level}", positional_encoding(height, width, self.condition_dims), persistent=False)
            self.register_buffer(f"feature_mean_{level}", torch.zeros(level_channels))
            self.register_buffer(f"feature_std_{level}", torch.ones(level_channels))

    def options(self) -> dict[str, Any]:
        """Return the constructor options that rebuild this architecture (written to bundle metadata)."""
        return {
            "epochs": self.epochs,
            "coupling_blocks": self.coupling_blocks,
            "clamp_alpha": self.clamp_alpha,
            "condition_dims": self.condition_dims,
            "fiber_batch_size": self.fiber_batch_size,
            "lr": self.lr,
            "warmup_fraction": self.warmup_fraction,
            "fibers_per_image": self.fibers_per_image,
            "level_weighting": self.level_weighting,
            "seed": self.seed,
        }

    def _level_buffers(self, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return getattr(self, f"encoding_{level}"), getattr(self, f"feature_mean_{level}"), getattr(self, f"feature_std_{level}")

    def anomaly_map(self, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Return the negative log-likelihood per channel, combined over levels by ``level_weights``: (batch, height_0, width_0).

        ``feature_maps`` contains one (batch, channels_i, height_i, width_i) map per level.
        """
        size = self.feature_sizes[0]
        combined = None
        for level, (flow, features) in enumerate(zip(self.flows, feature_maps)):
            encoding, mean, std = self._level_buffers(level)
            height, width = features.shape[-2:]
            fibers = features.flatten(2).transpose(1, 2)  # (batch, positions, channels)
            fibers = (fibers - mean) / std
            nll = flow(fibers, encoding).reshape(-1, 1, height, width)  # (batch, 1, height, width)
            if (height, width) != size:
                nll = F.interpolate(nll, size=size, mode="bilinear", align_corners=False)
            weighted = self.level_weights[level] * nll
            combined = weighted if combined is None else combined + weighted
        return combined[:, 0]

    def fit(self, feature_batches: Iterable[list[torch.Tensor]], progress: bool = True) -> None:
        """Cache the training features once, then train every flow on the cached fibers.

        ``feature_batches`` yields lists of (batch, channels_i, height_i, width_i)
        tensors, one list per image batch; it is read once. Raises
        ``ValueError`` when it yields fewer than two images or maps of an
        unexpected shape.
        """
        cache = self._cache_features(feature_batches)
        self._fit_standardization(cache)
        self._train_flows(cache, progress)
        self.eval()

    def _cache_features(self, feature_batches: Iterable[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Collect fibers per level as float16: (images, positions, channels)."""
        per_level: list[list[torch.Tensor]] = [[] for _ in self.channels]
        for feature_maps in feature_batches:
            if len(feature_maps) != len(self.channels):
                raise ValueError(f"expected {len(self.channels)} feature maps per batch, got {len(feature_maps)}")
            for level, features in enumerate(feature_maps):
                expected = (self.channels[level], *self.feature_sizes[level])
                if tuple(features.shape[1:]) != expected:
                    raise ValueError(f"feature map {level} has shape {tuple(features.shape[1:])}, expected {expected} for input size {self.input_size}")
                per_level[level].append(features.detach().flatten(2).transpose(1, 2).to(torch.float16))
        cache = [torch.cat(batches) for batches in per_level] if per_level[0] else []
        images = cache[0].shape[0] if cache else 0
        if images < 2:
            raise ValueError(f"CFLOW needs at least 2 training images, got {images}")
        size_mib = sum(level.numel() * 2 for level in cache) / 2**20
        logger.info("cached features of %d images (%.1f MiB, float16)", images, size_mib)
        return cache

    @torch.no_grad()
    def _fit_standardization(self, cache: list[torch.Tensor]) -> None:
        """Store each level's per-channel mean and standard deviation of the training fibers."""
        for level, fibers in enumerate(cache):
            _, mean, std = self._level_buffers(level)
            values = fibers.reshape(-1, fibers.shape[-1]).double()
            mean.copy_(values.mean(dim=0).float())
            # A floor keeps channels that are constant (dead activations) finite after division.
            std.copy_(values.std(dim=0).clamp_min(1e-3).float())

    def _train_flows(self, cache: list[torch.Tensor], progress: bool) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        images = cache[0].shape[0]
        per_epoch = [self._fibers_per_epoch(images, fibers.shape[1]) for fibers in cache]
        steps_per_epoch = [math.ceil(count / self.fiber_batch_size) for count in per_epoch]
        total_steps = self.epochs * sum(steps_per_epoch)
        logger.info("training %d flows: %d epochs, %s fibers per epoch, %d steps", len(self.flows), self.epochs, per_epoch, total_steps)

        optimizers = [torch.optim.Adam(flow.parameters(), lr=self.lr) for flow in self.flows]
        schedulers = [
            torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(self.epochs * steps, self.warmup_fraction))
            for optimizer, steps in zip(optimizers, steps_per_epoch)
        ]
        self.train()
        with torch.enable_grad(), progress_bar(total_steps, "Training CFLOW flows", progress) as advance:
            for epoch in range(self.epochs):
                losses = []
                for level, fibers in enumerate(cache):
                    loss = self._train_epoch(level, fibers, optimizers[level], schedulers[level], generator, advance)
                    losses.append(loss)
                logger.info("epoch %d/%d: mean loss per level %s", epoch + 1, self.epochs, ", ".join(f"{loss:.4f}" for loss in losses))

    def _fibers_per_epoch(self, images: int, positions: int) -> int:
        if self.fibers_per_image and self.fibers_per_image < positions:
            return images * self.fibers_per_image
        return images * positions

    def _epoch_indices(self, images: int, positions: int, generator: torch.Generator) -> torch.Tensor:
        """Return shuffled flat fiber indices (image * positions + position) for one epoch."""
        if not self.fibers_per_image or self.fibers_per_image >= positions:
            return torch.randperm(images * positions, generator=generator)
        # Random positions per image, drawn anew every epoch.
        keys = torch.rand(images, positions, generator=generator)
        chosen = keys.argsort(dim=1)[:, : self.fibers_per_image]  # (images, fibers_per_image)
        flat = (chosen + torch.arange(images)[:, None] * positions).flatten()
        return flat[torch.randperm(flat.numel(), generator=generator)]

    def _train_epoch(self, level, fibers, optimizer, scheduler, generator, advance) -> float:
        flow = self.flows[level]
        encoding, mean, std = self._level_buffers(level)
        images, positions, channels = fibers.shape
        flat_fibers = fibers.reshape(images * positions, channels)
        indices = self._epoch_indices(images, positions, generator)

        total, count = 0.0, 0
        for start in range(0, indices.numel(), self.fiber_batch_size):
            batch_indices = indices[start : start + self.fiber_batch_size]
            batch = (flat_fibers.index_select(0, batch_indices).float() - mean) / std  # (fibers, channels)
            loss = flow(batch, encoding, batch_indices % positions).mean()

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            total += loss.item() * batch_indices.numel()
            count += batch_indices.numel()
            advance(1, loss=loss.item())
        return total / count


def _warmup_cosine(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _check_options(channels, strides, input_size, epochs, coupling_blocks, clamp_alpha, fiber_batch_size, lr, warmup_fraction, fibers_per_image) -> None:
    if len(channels) == 0 or len(channels) != len(strides):
        raise ValueError(f"invalid feature levels: {len(channels)} channel counts for {len(strides)} strides")
    if min(channels) < 2:
        raise ValueError(f"invalid channels {list(channels)}: a coupling flow needs at least 2 channels per level")
    if len(input_size) != 2 or min(input_size) < max(strides):
        raise ValueError(f"invalid input_size {tuple(input_size)}: expected (height, width), each at least the largest stride {max(strides)}")
    checks = {
        "epochs": (epochs, epochs >= 1),
        "coupling_blocks": (coupling_blocks, coupling_blocks >= 1),
        "clamp_alpha": (clamp_alpha, clamp_alpha > 0),
        "fiber_batch_size": (fiber_batch_size, fiber_batch_size >= 1),
        "lr": (lr, lr > 0),
        "warmup_fraction": (warmup_fraction, 0 <= warmup_fraction < 1),
        "fibers_per_image": (fibers_per_image, fibers_per_image >= 0),
    }
    for name, (value, valid) in checks.items():
        if not valid:
            raise ValueError(f"invalid CFLOW option {name}={value!r}")
