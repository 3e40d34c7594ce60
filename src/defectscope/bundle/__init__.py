"""Bundles: a trained model saved as tensors (safetensors) and JSON, never pickles.

``metadata`` is torch-free so the deployed runtime can read bundles; ``io``
builds and loads the PyTorch model.
"""
