"""defectscope: unsupervised visual defect detection for manufacturing quality control.

The training API (``train``, ``evaluate``) imports PyTorch on first use, so
``import defectscope.runtime`` stays torch-free.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "train": ("defectscope.api", "train"),
    "evaluate": ("defectscope.api", "evaluate"),
    "predict": ("defectscope.api", "predict"),
    "TrainConfig": ("defectscope.training", "TrainConfig"),
    "Inferencer": ("defectscope.runtime.inferencer", "Inferencer"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'defectscope' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]
