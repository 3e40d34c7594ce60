"""The full scoring network: backbone, model head, upsampling and blur.

This is the graph that runs at inference and that export writes to ONNX and
OpenVINO: normalized images (batch, 3, height, width) in, anomaly maps
(batch, height, width) at the input size out.
"""

from __future__ import annotations

import torch
from torch import nn

from defectscope.features.backbone import Backbone
from defectscope.scoring.smoothing import MapSmoother


class AnomalyModel(nn.Module):
    """Backbone features -> head anomaly map -> upsampled, blurred map."""

    def __init__(self, backbone: Backbone, head: nn.Module, input_size: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.smoother = MapSmoother(input_size, sigma)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.smoother(self.head.anomaly_map(self.backbone(images)))
