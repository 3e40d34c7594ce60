"""The quick demo subset of the embedded ELPV solar-cell data."""

from __future__ import annotations

from defectscope.data.sample import Sample

DEMO_TRAIN = 300
DEMO_TEST_PER_CLASS = 100
DEMO_THRESHOLD_QUANTILE = 0.95


def demo_subset(samples: list[Sample]) -> list[Sample]:
    """Keep every k-th image so the demo runs in about a minute on two CPU cores.

    From the ELPV split it keeps 300 training normals and 100 test images of
    each class, spread evenly over the sorted file names (mono and poly cells
    alike). ``defectscope demo --full`` uses everything.
    """
    train = sorted((s for s in samples if s.split == "train"), key=lambda s: str(s.image_path))
    normal = sorted((s for s in samples if s.split == "test" and s.label == 0), key=lambda s: str(s.image_path))
    anomalous = sorted((s for s in samples if s.split == "test" and s.label == 1), key=lambda s: str(s.image_path))
    return _spread(train, DEMO_TRAIN) + _spread(normal, DEMO_TEST_PER_CLASS) + _spread(anomalous, DEMO_TEST_PER_CLASS)


def _spread(items: list[Sample], count: int) -> list[Sample]:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]
