"""Tests for the dataset readers on the shared real datasets and on generated folders."""

from __future__ import annotations

import csv
import importlib.util
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.data import (
    ANOMALOUS,
    NORMAL,
    DatasetError,
    Sample,
    by_split,
    read_elpv,
    read_folders,
    read_mvtec,
    read_split_csv,
    split_calibration,
    write_manifest,
)

# The datasets sit next to the checkout (their licenses forbid copies in the repository).
SHARED_DATA = Path(os.environ.get("DEFECTSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MVTEC_BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
MAGNETIC_TILE_CSV = SHARED_DATA / "magnetic_tile" / "split.csv"
VISA_CSV = SHARED_DATA / "visa" / "split_csv" / "1cls.csv"

needs_mvtec = pytest.mark.skipif(not MVTEC_BOTTLE.is_dir(), reason=f"shared data not found at {MVTEC_BOTTLE}")
needs_magnetic_tile = pytest.mark.skipif(
    not MAGNETIC_TILE_CSV.is_file(), reason=f"shared data not found at {MAGNETIC_TILE_CSV}"
)
needs_visa_csv = pytest.mark.skipif(not VISA_CSV.is_file(), reason=f"shared data not found at {VISA_CSV}")
needs_elpv = pytest.mark.skipif(
    importlib.util.find_spec("elpv_dataset") is None, reason="package elpv-dataset is not installed"
)


def _write_image(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)
    return path


def _split_counts(samples: list[Sample]) -> Counter:
    return Counter((sample.split, sample.label) for sample in samples)


# --- MVTec AD ---------------------------------------------------------------


@needs_mvtec
def test_read_mvtec_bottle_counts() -> None:
    samples = read_mvtec(MVTEC_BOTTLE)

    counts = _split_counts(samples)
    assert counts[("train", NORMAL)] == 209
    assert counts[("test", NORMAL)] == 20
    assert counts[("test", ANOMALOUS)] == 63
    assert len(samples) == 292


@needs_mvtec
def test_read_mvtec_bottle_masks_match_stem() -> None:
    anomalous = [sample for sample in read_mvtec(MVTEC_BOTTLE) if sample.label == ANOMALOUS]

    for sample in anomalous:
        assert sample.mask_path is not None, sample.image_path
        assert sample.mask_path.is_file(), sample.mask_path
        assert sample.mask_path.name == f"{sample.image_path.stem}_mask.png"
        assert sample.mask_path.parent.name == sample.defect_type
    assert Counter(sample.defect_type for sample in anomalous) == {
        "broken_large": 20,
        "broken_small": 22,
        "contamination": 21,
    }


@needs_mvtec
def test_read_mvtec_root_and_category() -> None:
    samples = read_mvtec(MVTEC_BOTTLE.parent, category="bottle")

    assert len(samples) == 292
    assert {sample.category for sample in samples} == {"bottle"}


@needs_mvtec
def test_read_mvtec_root_lists_categories() -> None:
    with pytest.raises(DatasetError, match="bottle"):
        read_mvtec(MVTEC_BOTTLE.parent)


def test_read_mvtec_missing_mask_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    category = tmp_path / "widget"
    _write_image(category / "train" / "good" / "000.png")
    _write_image(category / "test" / "good" / "000.png")
    _write_image(category / "test" / "scratch" / "000.png")
    _write_image(category / "test" / "scratch" / "001.png")
    _write_image(category / "ground_truth" / "scratch" / "001_mask.png", value=255)

    with caplog.at_level("WARNING"):
        samples = read_mvtec(category)

    masks = {sample.image_path.name: sample.mask_path for sample in samples if sample.label == ANOMALOUS}
    assert masks["000.png"] is None
    assert masks["001.png"] == category / "ground_truth" / "scratch" / "001_mask.png"
    assert "000.png" in caplog.text


def test_read_mvtec_empty_train_raises(tmp_path: Path) -> None:
    category = tmp_path / "widget"
    (category / "train" / "good").mkdir(parents=True)
    _write_image(category / "test" / "good" / "000.png")

    with pytest.raises(DatasetError, match=r"no images in .*train.good"):
        read_mvtec(category)


def test_read_mvtec_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_mvtec(tmp_path / "nothing")


# --- split CSV: magnetic tile and VisA -----------------------------------


@needs_magnetic_tile
def test_magnetic_tile_split_counts() -> None:
    samples = read_split_csv(MAGNETIC_TILE_CSV)

    counts = _split_counts(samples)
    assert counts[("train", NORMAL)] == 762
    assert counts[("test", NORMAL)] == 190
    assert counts[("test", ANOMALOUS)] == 392


@needs_magnetic_tile
def test_magnetic_tile_masks_match_stem() -> None:
    anomalous = [sample for sample in read_split_csv(MAGNETIC_TILE_CSV) if sample.label == ANOMALOUS]

    for sample in anomalous:
        assert sample.mask_path is not None, sample.image_path
        assert sample.mask_path.is_file(), sample.mask_path
        assert sample.mask_path.stem == sample.image_path.stem
        assert sample.mask_path.parent == sample.image_path.parent


def _visa_rows(category: str) -> list[dict[str, str]]:
    with VISA_CSV.open(newline="") as file:
        return [row for row in csv.DictReader(file) if row["object"] == category]


@needs_visa_csv
def test_read_split_csv_visa_category(tmp_path: Path) -> None:
    rows = _visa_rows("cashew")
    visa_root = tmp_path / "visa"
    for row in rows:
        _write_image(visa_root / row["image"])
        if row["mask"]:
            _write_image(visa_root / row["mask"], value=1)
    csv_copy = visa_root / "split_csv" / "1cls.csv"
    csv_copy.parent.mkdir(parents=True)
    csv_copy.write_bytes(VISA_CSV.read_bytes())

    samples = read_split_csv(csv_copy, category="cashew")

    expected = Counter((row["split"], NORMAL if row["label"] == "normal" else ANOMALOUS) for row in rows)
    assert _split_counts(samples) == expected
    assert all(sample.image_path.is_relative_to(visa_root) for sample in samples)
    assert all(sample.mask_path is not None for sample in samples if sample.label == ANOMALOUS)


@needs_visa_csv
def test_read_split_csv_visa_explicit_root(tmp_path: Path) -> None:
    rows = _visa_rows("pipe_fryum")
    for row in rows:
        _write_image(tmp_path / row["image"])
        if row["mask"]:
            _write_image(tmp_path / row["mask"], value=2)

    samples = read_split_csv(VISA_CSV, root=tmp_path, category="pipe_fryum")

    assert len(samples) == len(rows)
    assert {sample.category for sample in samples} == {"pipe_fryum"}


@needs_visa_csv
def test_read_split_csv_unknown_category(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="available categories are.*pcb1"):
        read_split_csv(VISA_CSV, root=tmp_path, category="teapot")


@needs_visa_csv
def test_read_split_csv_missing_files_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing under root"):
        read_split_csv(VISA_CSV, root=tmp_path, category="cashew")


def test_read_split_csv_missing_columns_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("object,split,image\nx,train,a.png\n")

    with pytest.raises(DatasetError, match=r"bad.csv lacks the columns label, mask"):
        read_split_csv(path)


def test_read_split_csv_numeric_labels_and_case(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png")
    _write_image(tmp_path / "b.png")
    _write_image(tmp_path / "b_mask.png", value=255)
    path = tmp_path / "split.csv"
    path.write_text("object,split,label,image,mask\npart,TRAIN,0,a.png,\npart,Test,Anomaly,b.png,b_mask.png\n")

    samples = read_split_csv(path)

    assert samples[0] == Sample(tmp_path / "a.png", NORMAL, "train", None, "part", "good")
    assert samples[1] == Sample(tmp_path / "b.png", ANOMALOUS, "test", tmp_path / "b_mask.png", "part", "anomaly")


def test_read_split_csv_invalid_label_raises(tmp_path: Path) -> None:
    path = tmp_path / "split.csv"
    path.write_text("object,split,label,image,mask\npart,train,maybe,a.png,\n")

    with pytest.raises(DatasetError, match=r"invalid label 'maybe' in .*split.csv line 2"):
        read_split_csv(path, check_files=False)


# --- manifest round trip ----------------------------------------------------


def test_write_manifest_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    samples = [
        Sample(_write_image(data / "good" / "a.png"), NORMAL, "train", None, "part", "good"),
        Sample(_write_image(data / "good" / "b.png"), NORMAL, "calibration", None, "part", "good"),
        Sample(_write_image(data / "good" / "c.png"), NORMAL, "test", None, "part", "good"),
        Sample(
            _write_image(data / "bad" / "d.png"),
            ANOMALOUS,
            "test",
            _write_image(data / "masks" / "d_mask.png", value=255),
            "part",
            "scratch",
        ),
        Sample(_write_image(data / "bad" / "e.png"), ANOMALOUS, "test", None, "part", "dent"),
    ]
    outside = Sample(_write_image(tmp_path / "elsewhere" / "f.png"), NORMAL, "train", None, "part", "good")
    manifest = data / "manifest.csv"

    write_manifest([*samples, outside], manifest)
    read_back = read_split_csv(manifest)

    assert read_back == [*samples, outside]
    text = manifest.read_text()
    assert ",good/a.png," in text
    assert str(outside.image_path.absolute().as_posix()) in text


def test_write_manifest_empty_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no samples"):
        write_manifest([], tmp_path / "manifest.csv")


@needs_mvtec
def test_write_manifest_mvtec_round_trip(tmp_path: Path) -> None:
    samples = read_mvtec(MVTEC_BOTTLE)
    manifest = tmp_path / "bottle.csv"

    write_manifest(samples, manifest, root=MVTEC_BOTTLE)

    assert read_split_csv(manifest, root=MVTEC_BOTTLE) == samples


# --- plain folders ----------------------------------------------------------


def test_read_folders_pairs_masks_by_stem(tmp_path: Path) -> None:
    # Pairing by sorted position would swap two masks: exp2_num_542.jpg sorts before
    # exp2_num_54273.jpg, but exp2_num_54273.png sorts before exp2_num_542_mask.png.
    for stem in ("exp2_num_542", "exp2_num_54273", "exp2_num_6"):
        _write_image(tmp_path / "bad" / f"{stem}.jpg")
    _write_image(tmp_path / "masks" / "exp2_num_54273.png", value=255)
    _write_image(tmp_path / "masks" / "exp2_num_542_mask.png", value=255)
    _write_image(tmp_path / "masks" / "exp2_num_6.bmp", value=255)
    _write_image(tmp_path / "good" / "n1.PNG")
    _write_image(tmp_path / "good" / "n2.tiff")

    samples = read_folders(tmp_path / "good", tmp_path / "bad", tmp_path / "masks")

    masks = {sample.image_path.stem: sample.mask_path for sample in samples if sample.label == ANOMALOUS}
    assert masks["exp2_num_542"] == tmp_path / "masks" / "exp2_num_542_mask.png"
    assert masks["exp2_num_54273"] == tmp_path / "masks" / "exp2_num_54273.png"
    assert masks["exp2_num_6"] == tmp_path / "masks" / "exp2_num_6.bmp"
    assert _split_counts(samples) == {("train", NORMAL): 2, ("test", ANOMALOUS): 3}


def test_read_folders_test_normals_and_defaults(tmp_path: Path) -> None:
    product = tmp_path / "screws"
    _write_image(product / "good" / "a.jpg")
    _write_image(product / "good_test" / "b.jpeg")
    _write_image(product / "bad" / "c.png")
    (product / "good" / "notes.txt").write_text("not an image")
    _write_image(product / "good" / ".hidden.png")

    samples = read_folders(product / "good", product / "bad", test_normal_dir=product / "good_test")

    assert _split_counts(samples) == {("train", NORMAL): 1, ("test", NORMAL): 1, ("test", ANOMALOUS): 1}
    assert {sample.category for sample in samples} == {"screws"}
    assert samples[-1].defect_type == "bad"
    assert samples[-1].mask_path is None


def test_read_folders_empty_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()

    with pytest.raises(DatasetError, match=r"no images in .*good"):
        read_folders(tmp_path / "good")


def test_read_folders_missing_folder_raises(tmp_path: Path) -> None:
    _write_image(tmp_path / "good" / "a.png")

    with pytest.raises(DatasetError, match=r"image folder not found: .*bad"):
        read_folders(tmp_path / "good", tmp_path / "bad")


def test_read_folders_duplicate_mask_stem_raises(tmp_path: Path) -> None:
    _write_image(tmp_path / "good" / "a.png")
    _write_image(tmp_path / "bad" / "x.png")
    _write_image(tmp_path / "masks" / "x.png")
    _write_image(tmp_path / "masks" / "x.bmp")

    with pytest.raises(DatasetError, match="two masks with the stem 'x'"):
        read_folders(tmp_path / "good", tmp_path / "bad", tmp_path / "masks")


# --- ELPV -------------------------------------------------------------------


@needs_elpv
def test_read_elpv_counts() -> None:
    samples = read_elpv()

    counts = _split_counts(samples)
    assert counts[("train", NORMAL)] == 1207
    assert counts[("test", NORMAL)] == 301
    assert counts[("test", ANOMALOUS)] == 715
    assert all(sample.mask_path is None for sample in samples)
    assert {sample.category for sample in samples} == {"elpv"}


@needs_elpv
def test_read_elpv_deterministic() -> None:
    assert read_elpv() == read_elpv()


# --- splits -----------------------------------------------------------------


def _train_samples(count: int) -> list[Sample]:
    return [Sample(Path(f"/data/{index:03d}.png"), NORMAL, "train", None, "part") for index in range(count)]


def test_split_calibration_counts() -> None:
    samples = _train_samples(200) + [Sample(Path("/data/bad.png"), ANOMALOUS, "test", None, "part", "dent")]

    result = split_calibration(samples, fraction=0.1, min_count=10)

    assert len(by_split(result, "calibration")) == 20
    assert len(by_split(result, "train")) == 180
    assert len(by_split(result, "test")) == 1


def test_split_calibration_min_count() -> None:
    result = split_calibration(_train_samples(30), fraction=0.1, min_count=10)

    assert len(by_split(result, "calibration")) == 10


def test_split_calibration_deterministic() -> None:
    samples = _train_samples(100)

    first = split_calibration(samples, seed=3)
    second = split_calibration(list(reversed(samples)), seed=3)
    other_seed = split_calibration(samples, seed=4)

    chosen = {sample.image_path for sample in by_split(first, "calibration")}
    assert chosen == {sample.image_path for sample in by_split(second, "calibration")}
    assert chosen != {sample.image_path for sample in by_split(other_seed, "calibration")}


def test_split_calibration_too_few_raises() -> None:
    with pytest.raises(DatasetError, match="only 10 normal training images"):
        split_calibration(_train_samples(10), min_count=10)


def test_split_calibration_keeps_given_split() -> None:
    samples = _train_samples(20) + [Sample(Path("/data/val.png"), NORMAL, "calibration", None, "part")]

    assert split_calibration(samples) == samples


def test_by_split_invalid_raises() -> None:
    with pytest.raises(ValueError, match="invalid split 'validation'"):
        by_split([], "validation")
