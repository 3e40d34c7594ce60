"""Torch modules that turn feature-resolution maps into input-resolution maps.

These modules are part of the exported graph (ONNX, OpenVINO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering +-4 sigma: ``2 * int(4 * sigma + 0.5) + 1`` (33 for sigma 4)."""
    return 2 * int(4.0 * sigma + 0.5) + 1


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of (batch, 1, height, width) maps with reflect padding.

    ``sigma <= 0`` turns the blur off.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        size = gaussian_kernel_size(sigma) if sigma > 0 else 1
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        kernel = torch.exp(-(coordinates**2) / (2 * sigma**2)) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        kernel = (kernel / kernel.sum()).float()
        self.register_buffer("kernel_x", kernel.view(1, 1, 1, size), persistent=False)
        self.register_buffer("kernel_y", kernel.view(1, 1, size, 1), persistent=False)
        self.padding = size // 2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return maps
        pad = self.padding
        maps = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), self.kernel_x)
        return F.conv2d(F.pad(maps, (0, 0, pad, pad), mode="reflect"), self.kernel_y)


class MapSmoother(nn.Module):
    """Upsample (batch, height, width) maps bilinearly to the input size, then blur them."""

    def __init__(self, input_size: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.blur = GaussianBlur(sigma)
        if sigma > 0 and self.blur.padding >= min(self.input_size):
            raise ValueError(f"blur sigma {sigma} is too large for input size {self.input_size}")

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        maps = F.interpolate(maps.unsqueeze(1), size=self.input_size, mode="bilinear", align_corners=False)
        return self.blur(maps).squeeze(1)


