"""Inference from a bundle: numpy pre/post-processing around a backend.

Importing this package does not import torch; only the ``torch`` backend does.
"""

from defectscope.runtime.inferencer import Inferencer

__all__ = ["Inferencer"]
