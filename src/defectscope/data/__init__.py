"""Samples, image and mask reading, and dataset readers."""

from defectscope.data.datasets import (
    DatasetError,
    by_split,
    read_elpv,
    read_folders,
    read_mvtec,
    read_split_csv,
    split_calibration,
    write_manifest,
)
from defectscope.data.image_io import MAX_PIXELS, ImageReadError, image_size, read_image, read_mask
from defectscope.data.sample import ANOMALOUS, NORMAL, SPLITS, Sample

__all__ = [
    "ANOMALOUS",
    "MAX_PIXELS",
    "NORMAL",
    "SPLITS",
    "DatasetError",
    "ImageReadError",
    "Sample",
    "by_split",
    "image_size",
    "read_elpv",
    "read_folders",
    "read_image",
    "read_mask",
    "read_mvtec",
    "read_split_csv",
    "split_calibration",
    "write_manifest",
]
