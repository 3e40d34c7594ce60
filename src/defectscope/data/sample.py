"""The `Sample` record: one image of a dataset with its label, mask and split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

NORMAL = 0
ANOMALOUS = 1
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 (normal) or 1 (anomalous). ``mask_path`` is None for normal
    images and for anomalous images without a ground-truth mask. ``split`` is
    one of ``train``, ``calibration`` or ``test``.
    """

    image_path: Path
    label: int
    split: str
    mask_path: Path | None = None
    category: str = ""
    defect_type: str = "good"

    def __post_init__(self) -> None:
        if self.label not in (NORMAL, ANOMALOUS):
            raise ValueError(f"invalid label {self.label!r} for {self.image_path}: expected 0 (normal) or 1 (anomalous)")
        if self.split not in SPLITS:
            raise ValueError(f"invalid split {self.split!r} for {self.image_path}: expected one of {', '.join(SPLITS)}")
