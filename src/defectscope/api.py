"""Python API that mirrors the CLI: load a dataset, train, evaluate, predict."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from defectscope.data.datasets import (
    IMAGE_EXTENSIONS,
    DatasetError,
    read_elpv,
    read_folders,
    read_mvtec,
    read_split_csv,
)
from defectscope.data.sample import Sample

logger = logging.getLogger(__name__)

ELPV = "elpv"


def load_dataset(
    dataset: str | Path | None = None,
    category: str | None = None,
    root: str | Path | None = None,
    normal_dir: str | Path | None = None,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    test_normal_dir: str | Path | None = None,
    validation_dir: str | Path | None = None,
    validation_abnormal_dir: str | Path | None = None,
) -> list[Sample]:
    """Read a dataset from a spec, detecting its layout.

    ``dataset`` is ``"elpv"`` (the embedded default), a CSV file (VisA split
    CSV or a defectscope manifest, columns ``object,split,label,image,mask``),
    or an MVTec AD category folder (it contains ``train/good``). Without
    ``dataset``, plain folders are read from ``normal_dir`` (train),
    ``abnormal_dir``, ``mask_dir`` and ``test_normal_dir``.

    ``validation_dir`` (normal images) and ``validation_abnormal_dir`` form a
    calibration split that the user gives. The threshold is then fitted on
    them instead of on images carved from the training normals.

    Raises ``DatasetError`` when the spec matches no layout.
    """
    if dataset is None and normal_dir is None:
        raise DatasetError("no dataset given: pass a dataset path, 'elpv', or --normal-dir")
    if dataset is None:
        samples = read_folders(normal_dir, abnormal_dir, mask_dir, test_normal_dir, category=category)
    elif str(dataset) == ELPV:
        samples = read_elpv()
    else:
        path = Path(dataset)
        if path.is_file() and path.suffix.lower() == ".csv":
            samples = read_split_csv(path, root=root, category=category)
        elif (path / "train" / "good").is_dir() or (category and (path / category / "train" / "good").is_dir()):
            samples = read_mvtec(path, category)
        elif not path.exists():
            raise DatasetError(f"dataset not found: {path}. Pass an MVTec AD category folder, a split CSV, or 'elpv'.")
        else:
            raise DatasetError(
                f"unrecognized dataset layout at {path}: expected an MVTec AD category folder (with train/good), "
                "a split CSV file (columns object,split,label,image,mask), or use --normal-dir for plain folders"
            )

    if validation_dir is not None or validation_abnormal_dir is not None:
        samples = [s for s in samples if s.split != "calibration"] + _validation_samples(validation_dir, validation_abnormal_dir)
    return samples


def _validation_samples(normal_dir: str | Path | None, abnormal_dir: str | Path | None) -> list[Sample]:
    if normal_dir is None:
        raise DatasetError("--validation-abnormal-dir needs --validation-dir with normal validation images too")
    folder_samples = read_folders(normal_dir, abnormal_dir)
    return [replace(sample, split="calibration") for sample in folder_samples]


def list_images(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (top level only) into a sorted list of image files.

    Raises ``DatasetError`` when a path does not exist or a folder has no images.
    """
    images: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DatasetError(f"no images in {item}: expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
            images.extend(found)
        elif item.exists():
            images.append(item)
        else:
            raise DatasetError(f"image not found: {item}")
    return images


def train(samples: list[Sample], output_dir: str | Path, config=None, progress: bool = True):
    """Train, calibrate, save a bundle and evaluate; see ``defectscope.training.train``."""
    from defectscope.training import train as run_training

    return run_training(samples, output_dir, config, progress)


def evaluate(bundle_dir: str | Path, samples: list[Sample], runtime: str = "torch", precision: str = "fp32", batch_size: int = 16, progress: bool = True):
    """Evaluate a bundle on the test split of ``samples``; see ``defectscope.evaluation.evaluate``."""
    from defectscope.data.datasets import by_split
    from defectscope.evaluation import evaluate as run_evaluation
    from defectscope.runtime.inferencer import Inferencer

    test_samples = by_split(samples, "test")
    if not test_samples:
        raise DatasetError("the dataset has no test split to evaluate on")
    return run_evaluation(Inferencer.load(bundle_dir, runtime, precision), test_samples, batch_size, progress)


def predict(bundle_dir: str | Path, images: list[str | Path], runtime: str = "torch", precision: str = "fp32", batch_size: int = 16):
    """Score image files with a bundle; returns one ``Prediction`` per file, in order."""
    from defectscope.runtime.inferencer import Inferencer

    return Inferencer.load(bundle_dir, runtime, precision).predict(list_images(images), batch_size)
