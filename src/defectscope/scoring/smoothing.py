"""Torch modules that turn feature-resolution maps into input-resolution maps.

These modules are part of the exported graph (ONNX, OpenVINO).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel size covering +-4 sigma: ``2 * int(4 * sigma + 0.5) + 1`` (33 for sigma 4)."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalized 1-D Gaussian kernel of ``gaussian_kernel_size(sigma)`` taps, float64."""
    size = gaussian_kernel_size(sigma)
    coordinates = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(coordinates**2) / (2 * sigma**2))
    return kernel / kernel.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of (batch, 1, height, width) maps with reflect padding.

    ``sigma <= 0`` turns the blur off.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        kernel = torch.from_numpy(gaussian_kernel(sigma) if sigma > 0 else np.ones(1)).float()
        size = kernel.numel()
        self.register_buffer("kernel_x", kernel.view(1, 1, 1, size), persistent=False)
        self.register_buffer("kernel_y", kernel.view(1, 1, size, 1), persistent=False)
        self.padding = size // 2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            return maps
        pad = self.padding
        maps = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode="reflect"), self.kernel_x)
        return F.conv2d(F.pad(maps, (0, 0, pad, pad), mode="reflect"), self.kernel_y)


def _linear_upsampling(source: int, target: int) -> np.ndarray:
    """(target, source) weights of 1-D linear resizing as ``F.interpolate(align_corners=False)`` computes them."""
    position = np.maximum((np.arange(target) + 0.5) * (source / target) - 0.5, 0.0)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, source - 1)
    weight = position - lower
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), lower), 1.0 - weight)
    np.add.at(matrix, (np.arange(target), upper), weight)
    return matrix


def axis_operator(source: int, target: int, sigma: float) -> np.ndarray:
    """The (target, source) float64 matrix of one axis: linear upsampling, then the blur.

    Upsampling follows ``F.interpolate(mode="bilinear", align_corners=False)``
    along that axis and the blur is ``GaussianBlur(sigma)`` (same float32
    kernel, reflect padding), so applying the operators of both axes equals
    upsampling and blurring the 2-D map. Built in numpy, so tracing the
    smoother for export records two matrix products and nothing else.
    """
    matrix = _linear_upsampling(source, target)
    if sigma <= 0:
        return matrix
    kernel = gaussian_kernel(sigma).astype(np.float32).astype(np.float64)
    padding = kernel.size // 2
    padded = np.pad(matrix, ((padding, padding), (0, 0)), mode="reflect")
    return sum(weight * padded[offset : offset + target] for offset, weight in enumerate(kernel))


class MapSmoother(nn.Module):
    """Upsample (batch, height, width) maps bilinearly to the input size, then blur them.

    Both steps are linear and separable, so they run as one product per axis,
    ``rows @ map @ columns.T``, with operators built once per map size. For a
    64 x 64 map and a 256 x 256 input this is about 5 M multiply-adds; the
    separate upsampling and 33-tap blur took 1.2 ms in OpenVINO on two cores.
    """

    def __init__(self, input_size: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.blur = GaussianBlur(sigma)
        if sigma > 0 and self.blur.padding >= min(self.input_size):
            raise ValueError(f"blur sigma {sigma} is too large for input size {self.input_size}")
        self._operators: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def operators(self, map_size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) operators for maps of ``map_size``: (input_height, height), (input_width, width)."""
        key = (tuple(map_size), device, dtype)
        if key not in self._operators:
            rows = axis_operator(map_size[0], self.input_size[0], self.blur.sigma)
            columns = axis_operator(map_size[1], self.input_size[1], self.blur.sigma)
            self._operators[key] = tuple(torch.from_numpy(matrix).to(device, dtype) for matrix in (rows, columns))
        return self._operators[key]

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        rows, columns = self.operators((int(maps.shape[-2]), int(maps.shape[-1])), maps.device, maps.dtype)
        return torch.matmul(torch.matmul(rows, maps), columns.transpose(0, 1))
