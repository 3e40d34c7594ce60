"""Scoring: pre/post-processing shared by training-time evaluation and deployment.

``processing`` and ``thresholds`` are numpy-only, so the torch-free runtime
imports them; ``smoothing`` contains the torch modules that go into the exported
graph.
"""
