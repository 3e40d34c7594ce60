"""Frozen, ImageNet-pretrained timm backbones that return multi-scale feature maps."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from defectscope.features.weights import ResolvedWeights, resolve_weights

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
# timm `out_indices` of the feature maps at strides 4, 8 and 16: for ResNets
# these are layer1-layer3, for EfficientNets the ends of stages 1, 2 and 4.
DEFAULT_OUT_INDICES = (1, 2, 3)
SUPPORTED_BACKBONES = ("tf_efficientnet_lite0", "resnet18", "wide_resnet50_2")


class Backbone(nn.Module):
    """A frozen timm ``features_only`` network in eval mode.

    ``forward`` maps a normalized image batch (batch, 3, height, width) to a
    list of feature maps, one per entry of ``out_indices``, each
    (batch, channels_i, height / stride_i, width / stride_i).
    """

    def __init__(self, model_name: str, out_indices: tuple[int, ...] = DEFAULT_OUT_INDICES) -> None:
        super().__init__()
        if model_name not in SUPPORTED_BACKBONES:
            logger.warning("backbone %s is untested; supported: %s", model_name, ", ".join(SUPPORTED_BACKBONES))
        self.model_name = model_name
        self.out_indices = tuple(out_indices)
        self.model = timm.create_model(model_name, pretrained=False, features_only=True, out_indices=self.out_indices)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[int] = list(self.model.feature_info.reduction())
        self.layer_names: list[str] = list(self.model.feature_info.module_name())
        self.pretrained_cfg = dict(self.model.pretrained_cfg)
        self.freeze()

    def freeze(self) -> None:
        """Put the network in eval mode, stop gradients and use channels-last memory.

        Channels-last makes the depthwise convolutions of EfficientNets about
        2x faster on CPU (measured with torch 2.14 on two cores).
        """
        self.model.eval()
        self.model.to(memory_format=torch.channels_last)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone stays in eval mode (frozen batch-norm statistics) whatever the parent does.
        super().train(mode)
        self.model.eval()
        return self

    def load_pretrained(self, weights: str | Path | None = None) -> ResolvedWeights:
        """Resolve ImageNet weights (see ``resolve_weights``) and load them.

        Raises ``WeightsNotFoundError`` when no weights can be found.
        """
        full_model = timm.create_model(self.model_name, pretrained=False)
        resolved = resolve_weights(self.model_name, full_model.state_dict(), weights)
        feature_keys = self.model.state_dict().keys()
        missing = [key for key in feature_keys if key not in resolved.state_dict]
        if missing:
            raise RuntimeError(f"mapped weights lack backbone keys {missing[:5]}; this is a bug in defectscope")
        self.model.load_state_dict({key: resolved.state_dict[key] for key in feature_keys})
        self.freeze()
        return resolved

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean (RGB, 0-1 scale) the pretrained weights expect."""
        return tuple(float(v) for v in self.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation (RGB, 0-1 scale) the pretrained weights expect."""
        return tuple(float(v) for v in self.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model(images.contiguous(memory_format=torch.channels_last))
