"""Build an ``AnomalyModel`` from the model section of bundle metadata."""

from __future__ import annotations

from typing import Any

from torch import nn

from defectscope.features.backbone import Backbone
from defectscope.models.anomaly_model import AnomalyModel
from defectscope.models.padim import Padim

MODELS = ("padim", "cflow")


def build_head(name: str, backbone: Backbone, input_size: tuple[int, int], options: dict[str, Any]) -> nn.Module:
    """Create an untrained model head for ``backbone``'s feature maps.

    Raises ``ValueError`` for an unknown model name.
    """
    first_stride = backbone.strides[0]
    feature_size = (input_size[0] // first_stride, input_size[1] // first_stride)
    if name == "padim":
        return Padim(sum(backbone.channels), feature_size, **options)
    if name == "cflow":
        from defectscope.models.cflow import Cflow

        return Cflow(backbone.channels, backbone.strides, input_size, **options)
    raise ValueError(f"invalid model {name!r}: expected one of {', '.join(MODELS)}")


def build_model(metadata: dict[str, Any]) -> AnomalyModel:
    """Create an untrained ``AnomalyModel`` with the architecture the metadata describes."""
    backbone = Backbone(metadata["backbone"]["name"], tuple(metadata["backbone"]["out_indices"]))
    input_size = tuple(metadata["input_size"])
    head = build_head(metadata["model"], backbone, input_size, metadata.get("model_options", {}))
    return AnomalyModel(backbone, head, input_size, metadata["sigma"])
