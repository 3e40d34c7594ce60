"""Dataset readers: each turns one folder layout or CSV into a list of `Sample` records.

Layouts: MVTec AD, split CSVs (VisA's ``split_csv/1cls.csv`` and the manifest
this module writes), plain folders, and the ELPV solar-cell images from the
``elpv-dataset`` package. No other module walks dataset folders.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from defectscope.data.sample import ANOMALOUS, NORMAL, SPLITS, Sample

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MANIFEST_COLUMNS = ("object", "split", "label", "image", "mask")
DEFECT_TYPE_COLUMN = "defect_type"

_NORMAL_LABELS = ("normal", "0")
_ANOMALOUS_LABELS = ("anomaly", "anomalous", "1")

# Share of defect-free ELPV cells held out for testing: every fifth by sorted name.
_TEST_EVERY = 5


class DatasetError(ValueError):
    """A dataset folder or CSV that is missing, empty or malformed."""


# --- shared helpers -------------------------------------------------------


def _list_images(folder: Path) -> list[Path]:
    """Return the image files directly inside `folder`, sorted by name.

    Hidden files (names starting with ".") are skipped, so macOS "._x.png"
    resource files do not count as images.
    """
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}. Check the path.")

    images = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not images:
        raise DatasetError(
            f"no images in {folder}: expected files ending in {', '.join(IMAGE_EXTENSIONS)} (any case). "
            f"Put the images directly in this folder or pass the folder that contains them."
        )
    return images


def _index_masks(folder: Path) -> dict[str, Path]:
    """Map each mask file's stem to its path, for matching masks to images by stem."""
    masks: dict[str, Path] = {}
    for path in _list_images(folder):
        if path.stem in masks:
            raise DatasetError(
                f"two masks with the stem {path.stem!r} in {folder}: {masks[path.stem].name} and {path.name}. "
                f"Keep one file per stem."
            )
        masks[path.stem] = path
    return masks


def _find_mask(masks: dict[str, Path], image: Path) -> Path | None:
    """Return the mask named ``<stem>_mask.*`` or ``<stem>.*`` for `image`, or None."""
    return masks.get(f"{image.stem}_mask") or masks.get(image.stem)


def _anomalous_samples(
    images: Iterable[Path], masks: dict[str, Path] | None, category: str, defect_type: str, mask_folder: Path | None
) -> list[Sample]:
    """Build test samples for anomalous images, pairing each with its mask by stem and warning about misses."""
    samples = []
    unmatched = []
    for image in images:
        mask = _find_mask(masks, image) if masks is not None else None
        if mask is None:
            unmatched.append(image.name)
        samples.append(Sample(image, ANOMALOUS, "test", mask, category, defect_type))

    if unmatched:
        logger.warning(
            "%d anomalous images of %s/%s have no mask in %s (pixel metrics will skip them), e.g. %s",
            len(unmatched),
            category,
            defect_type,
            mask_folder,
            ", ".join(unmatched[:3]),
        )
    return samples


def _log_counts(source: object, samples: Sequence[Sample]) -> None:
    train = sum(sample.split == "train" for sample in samples)
    test_normal = sum(sample.split == "test" and sample.label == NORMAL for sample in samples)
    test_anomalous = sum(sample.split == "test" and sample.label == ANOMALOUS for sample in samples)
    logger.info(
        "read %d samples from %s: %d train, %d test normal, %d test anomalous",
        len(samples),
        source,
        train,
        test_normal,
        test_anomalous,
    )


# --- MVTec AD ---------------------------------------------------------------


def read_mvtec(root: str | Path, category: str | None = None) -> list[Sample]:
    """Read one MVTec AD category.

    The layout is ``train/good`` (train normals), ``test/good`` (test normals),
    ``test/<defect>`` (test anomalous) and ``ground_truth/<defect>/<stem>_mask.png``.
    Masks are matched to images by file stem, never by sorted order. An
    anomalous image without a mask gets ``mask_path=None`` and a logged warning.

    Args:
        root: the category folder (``.../mvtec_ad/bottle``), or the MVTec AD
            root folder when `category` is given.
        category: category folder name inside `root`.

    Returns:
        samples in the order train, test normal, then test anomalous by defect type.

    Raises:
        DatasetError: a folder is missing or contains no images.
    """
    folder = Path(root) if category is None else Path(root) / category
    if not folder.is_dir():
        raise DatasetError(f"MVTec AD category folder not found: {folder}. Check root and category.")
    if not (folder / "train").is_dir():
        categories = sorted(child.name for child in folder.iterdir() if (child / "train").is_dir())
        hint = f"pass category= one of: {', '.join(categories)}" if categories else "pass a category folder"
        raise DatasetError(f"{folder} has no train/ folder, so it is not an MVTec AD category. To fix, {hint}.")
    test_folder = folder / "test"
    if not test_folder.is_dir():
        raise DatasetError(f"MVTec AD test folder not found: {test_folder}. Restore the category's test/ folder.")

    name = folder.name
    samples = [Sample(image, NORMAL, "train", None, name, "good") for image in _list_images(folder / "train" / "good")]

    defect_folders = sorted(child for child in test_folder.iterdir() if child.is_dir())
    for defect_folder in defect_folders:
        images = _list_images(defect_folder)
        defect_type = defect_folder.name
        if defect_type == "good":
            samples.extend(Sample(image, NORMAL, "test", None, name, "good") for image in images)
            continue

        mask_folder = folder / "ground_truth" / defect_type
        masks = _index_masks(mask_folder) if mask_folder.is_dir() else None
        samples.extend(_anomalous_samples(images, masks, name, defect_type, mask_folder))

    _log_counts(folder, samples)
    return samples


# --- split CSV and manifest -----------------------------------------------


def _default_csv_root(csv_path: Path) -> Path:
    """Return the folder that a CSV's relative paths start from.

    VisA keeps its split CSVs in ``<VisA root>/split_csv/``, so a CSV inside a
    folder named ``split_csv`` resolves against that folder's parent.
    """
    if csv_path.parent.name == "split_csv":
        return csv_path.parent.parent
    return csv_path.parent


def _parse_label(value: str, csv_path: Path, line: int) -> int:
    label = value.strip().lower()
    if label in _NORMAL_LABELS:
        return NORMAL
    if label in _ANOMALOUS_LABELS:
        return ANOMALOUS
    raise DatasetError(
        f"invalid label {value!r} in {csv_path} line {line}: expected normal or anomaly (or 0 or 1)."
    )


def _parse_split(value: str, csv_path: Path, line: int) -> str:
    split = value.strip().lower()
    if split not in SPLITS:
        raise DatasetError(f"invalid split {value!r} in {csv_path} line {line}: expected one of {', '.join(SPLITS)}.")
    return split


def _resolve(value: str, root: Path) -> Path:
    path = Path(value.strip())
    return path if path.is_absolute() else root / path


def read_split_csv(
    csv_path: str | Path,
    root: str | Path | None = None,
    category: str | None = None,
    check_files: bool = True,
) -> list[Sample]:
    """Read a split CSV with the columns ``object,split,label,image,mask``.

    This is VisA's ``split_csv/1cls.csv`` format and the manifest format that
    `write_manifest` writes. ``label`` is ``normal`` or ``anomaly`` (also
    ``anomalous``, 0 or 1, any case) and ``split`` is ``train``, ``calibration``
    or ``test``. ``mask`` may be empty. An optional ``defect_type`` column sets
    the samples' defect type. Without it, normals get ``good`` and anomalous
    samples get ``anomaly``.

    Args:
        csv_path: the CSV file.
        root: folder that relative paths start from. Defaults to the CSV's
            folder, or to its parent when that folder is named ``split_csv``
            (VisA's layout).
        category: keep only rows whose ``object`` equals this value.
        check_files: check that every listed image and mask exists.

    Returns:
        samples in the CSV's row order.

    Raises:
        DatasetError: the CSV is missing, lacks a column, has an invalid label
            or split, has no rows (for `category`), or lists missing files.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"split CSV not found: {csv_path}. Check the path.")
    root = _default_csv_root(csv_path) if root is None else Path(root)

    with csv_path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing_columns = [name for name in MANIFEST_COLUMNS if name not in columns]
        if missing_columns:
            raise DatasetError(
                f"{csv_path} lacks the columns {', '.join(missing_columns)}: expected a header with "
                f"{','.join(MANIFEST_COLUMNS)} (found {','.join(columns) or 'no header'})."
            )
        reader.fieldnames = columns
        rows = [(reader.line_num, row) for row in reader]

    if not rows:
        raise DatasetError(f"{csv_path} has a header but no rows. Add one row per image.")
    if category is not None:
        available = sorted({row["object"].strip() for _, row in rows})
        rows = [(line, row) for line, row in rows if row["object"].strip() == category]
        if not rows:
            raise DatasetError(
                f"category {category!r} not found in {csv_path}: available categories are {', '.join(available)}."
            )

    samples = []
    for line, row in rows:
        label = _parse_label(row["label"], csv_path, line)
        mask_value = (row["mask"] or "").strip()
        default_defect_type = "good" if label == NORMAL else "anomaly"
        defect_type = (row.get(DEFECT_TYPE_COLUMN) or "").strip() or default_defect_type
        samples.append(
            Sample(
                image_path=_resolve(row["image"], root),
                label=label,
                split=_parse_split(row["split"], csv_path, line),
                mask_path=_resolve(mask_value, root) if mask_value else None,
                category=row["object"].strip(),
                defect_type=defect_type,
            )
        )

    if check_files:
        _check_files_exist(samples, csv_path, root)
    _log_counts(csv_path, samples)
    return samples


def _check_files_exist(samples: Sequence[Sample], csv_path: Path, root: Path) -> None:
    listed = [sample.image_path for sample in samples]
    listed += [sample.mask_path for sample in samples if sample.mask_path is not None]
    missing = [path for path in listed if not path.is_file()]
    if missing:
        examples = ", ".join(str(path) for path in missing[:3])
        raise DatasetError(
            f"{len(missing)} of {len(listed)} files listed in {csv_path} are missing under root {root}, "
            f"e.g. {examples}. Pass root= the folder that the CSV's paths are relative to."
        )


def _relative_posix(path: Path, root: Path) -> str:
    """Return `path` relative to `root` when it lies inside it, else as an absolute path."""
    absolute = path.absolute()
    try:
        return absolute.relative_to(root.absolute()).as_posix()
    except ValueError:
        return absolute.as_posix()


def write_manifest(samples: Sequence[Sample], csv_path: str | Path, root: str | Path | None = None) -> Path:
    """Write samples to a CSV that `read_split_csv` reads back to the same samples.

    Columns are ``object,split,label,image,mask,defect_type``, with labels
    written as ``normal`` or ``anomaly``. Paths inside `root` are written
    relative to it and all others as absolute paths.

    Args:
        samples: the samples to write.
        csv_path: output file. Missing parent folders are created.
        root: folder for relative paths. Defaults to the folder that
            `read_split_csv` uses for this CSV path.

    Returns:
        the CSV path.

    Raises:
        DatasetError: `samples` is empty.
    """
    csv_path = Path(csv_path)
    if not samples:
        raise DatasetError(f"no samples to write to {csv_path}. Read a dataset first.")
    root = _default_csv_root(csv_path) if root is None else Path(root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    with csv_path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([*MANIFEST_COLUMNS, DEFECT_TYPE_COLUMN])
        for sample in samples:
            mask = _relative_posix(sample.mask_path, root) if sample.mask_path is not None else ""
            writer.writerow(
                [
                    sample.category,
                    sample.split,
                    "normal" if sample.label == NORMAL else "anomaly",
                    _relative_posix(sample.image_path, root),
                    mask,
                    sample.defect_type,
                ]
            )

    logger.info("wrote %d samples to %s (paths inside %s relative to it, others absolute)", len(samples), csv_path, root)
    return csv_path


# --- plain folders ----------------------------------------------------------


def read_folders(
    normal_dir: str | Path,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    test_normal_dir: str | Path | None = None,
    category: str | None = None,
) -> list[Sample]:
    """Read plain image folders (files directly inside each folder, not in subfolders).

    Images in `normal_dir` become train normals, in `abnormal_dir` test
    anomalous samples and in `test_normal_dir` test normals. Masks in
    `mask_dir` are matched to anomalous images by stem: ``<stem>_mask.<ext>``
    first, then ``<stem>.<ext>``, with any image extension. Anomalous images
    without a mask get ``mask_path=None`` and a logged warning.

    Args:
        normal_dir: defect-free training images.
        abnormal_dir: defective test images. Their defect type is this folder's name.
        mask_dir: masks of the defective images.
        test_normal_dir: defect-free test images.
        category: category name. Defaults to the name of `normal_dir`'s parent folder.

    Returns:
        samples in the order train, test normal, test anomalous.

    Raises:
        DatasetError: a folder is missing or has no images, or `mask_dir` is
            given without `abnormal_dir`.
    """
    normal_dir = Path(normal_dir)
    if mask_dir is not None and abnormal_dir is None:
        raise DatasetError(f"mask_dir {mask_dir} was given without abnormal_dir. Pass the folder of defective images.")
    category = normal_dir.absolute().parent.name if category is None else category

    samples = [Sample(image, NORMAL, "train", None, category, "good") for image in _list_images(normal_dir)]
    if test_normal_dir is not None:
        test_normals = _list_images(Path(test_normal_dir))
        samples.extend(Sample(image, NORMAL, "test", None, category, "good") for image in test_normals)
    if abnormal_dir is not None:
        abnormal_dir = Path(abnormal_dir)
        mask_folder = Path(mask_dir) if mask_dir is not None else None
        masks = _index_masks(mask_folder) if mask_folder is not None else None
        defect_images = _list_images(abnormal_dir)
        samples.extend(_anomalous_samples(defect_images, masks, category, abnormal_dir.name, mask_folder))

    _log_counts(normal_dir, samples)
    return samples


# --- ELPV (embedded default data) -----------------------------------------


def read_elpv() -> list[Sample]:
    """Read the ELPV solar-cell images installed by the ``elpv-dataset`` package.

    ``labels.csv`` gives each cell a defect probability of 0, 1/3, 2/3 or 1.
    Cells of probability 0, sorted by file name, form the normals: every fifth
    (the 5th, 10th, ...) is a test normal and the rest are train normals.
    Cells of probability 1 are test anomalous with defect type ``defect`` and
    no masks. Cells of probability 1/3 or 2/3 are left out because experts
    disagreed on them, and their count is logged. The split is deterministic.

    Returns:
        samples of category ``elpv`` in the order train, test normal, test anomalous.

    Raises:
        DatasetError: the package is not installed or its data files are missing.
    """
    try:
        import elpv_dataset
    except ImportError as error:
        raise DatasetError(
            "the ELPV dataset package is not installed. Install it with: pip install elpv-dataset"
        ) from error

    data_folder = Path(elpv_dataset.__file__).parent / "data"
    labels_path = data_folder / "labels.csv"
    if not labels_path.is_file():
        raise DatasetError(
            f"ELPV labels not found: {labels_path}. Reinstall the package: pip install --force-reinstall elpv-dataset"
        )

    defect_free: list[Path] = []
    defective: list[Path] = []
    ambiguous = 0
    for line_number, line in enumerate(labels_path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(
                f"invalid line {line_number} in {labels_path}: expected an image path and a defect probability."
            )
        image = data_folder / fields[0]
        probability = float(fields[1])
        if math.isclose(probability, 0.0, abs_tol=1e-6):
            defect_free.append(image)
        elif math.isclose(probability, 1.0, abs_tol=1e-6):
            defective.append(image)
        else:
            ambiguous += 1

    if not defect_free or not defective:
        raise DatasetError(f"{labels_path} lists no defect-free or no defective cells. Reinstall elpv-dataset.")
    missing = [path for path in defect_free + defective if not path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} ELPV images are missing, e.g. {missing[0]}. Reinstall elpv-dataset.")

    defect_free.sort(key=lambda path: path.name)
    defective.sort(key=lambda path: path.name)
    train = [image for index, image in enumerate(defect_free) if index % _TEST_EVERY != _TEST_EVERY - 1]
    test_normal = [image for index, image in enumerate(defect_free) if index % _TEST_EVERY == _TEST_EVERY - 1]

    samples = [Sample(image, NORMAL, "train", None, "elpv", "good") for image in train]
    samples += [Sample(image, NORMAL, "test", None, "elpv", "good") for image in test_normal]
    samples += [Sample(image, ANOMALOUS, "test", None, "elpv", "defect") for image in defective]

    logger.info("left out %d ELPV cells with defect probability 1/3 or 2/3 (ambiguous labels)", ambiguous)
    _log_counts(data_folder, samples)
    return samples


# --- splits -----------------------------------------------------------------


def split_calibration(
    samples: Sequence[Sample], fraction: float = 0.1, min_count: int = 10, seed: int = 0
) -> list[Sample]:
    """Move a random subset of the train normals to the ``calibration`` split.

    ``max(min_count, round(fraction * n))`` of the n train normals move, but
    at least one stays in train. The subset depends only on `seed` and the
    image paths, not on the order of `samples`. When any sample is already in
    ``calibration`` (a validation set the user gave), nothing moves.

    Returns:
        a new list in the order of `samples`, with moved samples replaced.

    Raises:
        ValueError: `fraction` is outside [0, 1) or `min_count` is below 1.
        DatasetError: there are fewer than ``min_count + 1`` train normals.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"invalid fraction {fraction}: expected a value in [0, 1), such as 0.1.")
    if min_count < 1:
        raise ValueError(f"invalid min_count {min_count}: expected at least 1.")

    samples = list(samples)
    if any(sample.split == "calibration" for sample in samples):
        logger.info("samples already have a calibration split, so none are moved from train")
        return samples

    train_indices = [
        index for index, sample in enumerate(samples) if sample.split == "train" and sample.label == NORMAL
    ]
    count = len(train_indices)
    if count < min_count + 1:
        raise DatasetError(
            f"only {count} normal training images: calibration needs {min_count} and training at least 1. "
            f"Add training images or lower min_count."
        )

    calibration_count = min(max(min_count, round(fraction * count)), count - 1)
    train_indices.sort(key=lambda index: str(samples[index].image_path))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(train_indices, size=calibration_count, replace=False)
    for index in chosen:
        samples[index] = dataclasses.replace(samples[index], split="calibration")

    logger.info("moved %d of %d train normals to the calibration split (seed %d)", calibration_count, count, seed)
    return samples


def by_split(samples: Iterable[Sample], split: str) -> list[Sample]:
    """Return the samples of one split (``train``, ``calibration`` or ``test``).

    Raises:
        ValueError: `split` is not a known split.
    """
    if split not in SPLITS:
        raise ValueError(f"invalid split {split!r}: expected one of {', '.join(SPLITS)}.")
    return [sample for sample in samples if sample.split == split]
