"""Tests for image and mask reading on real files written by Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.data.image_io import ImageReadError, image_size, read_image, read_mask
from defectscope.data.loader import iter_batches


def _gradient_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    red = np.broadcast_to(rows, (height, width))
    green = np.broadcast_to(cols, (height, width))
    blue = np.full((height, width), 90, np.uint8)
    return np.stack([red, green, blue], axis=2)


def _assert_rgb(pixels: np.ndarray, height: int, width: int) -> None:
    assert pixels.dtype == np.uint8
    assert pixels.shape == (height, width, 3)


def test_read_image_rgb_png_exact(tmp_path: Path) -> None:
    expected = _gradient_rgb()
    path = tmp_path / "rgb.png"
    Image.fromarray(expected).save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 24, 32)
    np.testing.assert_array_equal(pixels, expected)


def test_read_image_bmp(tmp_path: Path) -> None:
    expected = _gradient_rgb()
    path = tmp_path / "image.BMP"
    Image.fromarray(expected).save(path, format="BMP")

    pixels = read_image(path)

    np.testing.assert_array_equal(pixels, expected)


def test_read_image_grayscale_repeats_channel(tmp_path: Path) -> None:
    gray = np.arange(24 * 32, dtype=np.uint32).reshape(24, 32).astype(np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 24, 32)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], gray)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_read_image_16bit_divides_by_257(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 65535], [32896, 1000, 60000]], dtype=np.uint16)
    path = tmp_path / f"sixteen{suffix}"
    Image.fromarray(values).save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 2, 3)
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(pixels[:, :, 0], expected)
    assert pixels[0, 2, 0] == 255


def test_read_image_palette_png(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    palette_image.putdata([0, 1, 2, 1, 2, 0, 0, 1])
    path = tmp_path / "palette.png"
    palette_image.save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 2, 4)
    assert tuple(pixels[0, 1]) == (255, 0, 0)
    assert tuple(pixels[0, 2]) == (0, 255, 0)
    assert tuple(pixels[0, 0]) == (0, 0, 0)


def test_read_image_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[..., 3] = 0  # fully transparent: colors must survive anyway
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 3, 5)
    assert tuple(pixels[1, 1]) == (200, 100, 50)


def test_read_image_gray_alpha(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (6, 4), (77, 10)).save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 4, 6)
    assert tuple(pixels[0, 0]) == (77, 77, 77)


def test_read_image_one_bit(tmp_path: Path) -> None:
    image = Image.new("1", (8, 2), 0)
    image.putpixel((3, 1), 1)
    path = tmp_path / "bits.png"
    image.save(path)

    pixels = read_image(path)

    _assert_rgb(pixels, 2, 8)
    assert tuple(pixels[1, 3]) == (255, 255, 255)
    assert tuple(pixels[0, 0]) == (0, 0, 0)


def test_read_image_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK

    pixels = read_image(path)

    _assert_rgb(pixels, 8, 16)
    red, green, blue = (int(value) for value in pixels[4, 8])
    assert red > 200
    assert green < 60
    assert blue < 60


def test_read_image_exif_rotation_swaps_axes(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(_gradient_rgb(height=20, width=40)).save(path, exif=exif, quality=95)

    pixels = read_image(path)

    _assert_rgb(pixels, 40, 20)
    assert image_size(path) == (40, 20)


def test_image_size_reads_header(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.fromarray(_gradient_rgb(height=11, width=17)).save(path)

    assert image_size(path) == (11, 17)


def test_read_image_truncated_jpeg_raises(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image(truncated)


def test_read_image_not_an_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG\n")

    with pytest.raises(ImageReadError, match="notes.png.*not a recognized image format"):
        read_image(path)


def test_read_image_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not found.*absent.png"):
        read_image(tmp_path / "absent.png")


def test_read_image_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)


def test_read_image_pixel_limit_raises(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("RGB", (100, 50)).save(path)

    with pytest.raises(ImageReadError, match=r"large.png.*5000 pixels exceeds max_pixels=4999"):
        read_image(path, max_pixels=4999)


def test_read_image_pixel_limit_allows_equal(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("RGB", (100, 50)).save(path)

    assert read_image(path, max_pixels=5000).shape == (50, 100, 3)


def test_read_image_float_mode_raises(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)

    with pytest.raises(ImageReadError, match="float.tif.*floating-point"):
        read_image(path)


def test_read_mask_binarizes_above_zero(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [127, 255, 0]], dtype=np.uint8)
    path = tmp_path / "mask.png"
    Image.fromarray(values, mode="L").save(path)

    mask = read_mask(path)

    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, values > 0)


def test_read_mask_palette_uses_indices(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0] * 256)  # every index is black: only the indices mark defects
    image.putdata([0, 1, 2])
    path = tmp_path / "classes.png"
    image.save(path)

    np.testing.assert_array_equal(read_mask(path), [[False, True, True]])


def test_read_mask_rgb_any_channel(tmp_path: Path) -> None:
    values = np.zeros((1, 3, 3), dtype=np.uint8)
    values[0, 1] = (1, 0, 0)
    values[0, 2] = (0, 0, 255)
    path = tmp_path / "color_mask.png"
    Image.fromarray(values).save(path)

    np.testing.assert_array_equal(read_mask(path), [[False, True, True]])


def test_read_mask_size_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "small_mask.png"
    Image.new("L", (10, 5)).save(path)

    with pytest.raises(ImageReadError, match=r"small_mask.png is 5x10.*part.png is 8x12"):
        read_mask(path, expected_size=(8, 12), image_path=tmp_path / "part.png")


def test_read_mask_matching_size(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    Image.new("L", (10, 5), 255).save(path)

    mask = read_mask(path, expected_size=(5, 10))

    assert mask.shape == (5, 10)
    assert mask.all()


@pytest.mark.parametrize("count", [1, 3])
def test_loader_keeps_good_images_beside_bad_file(tmp_path, count):
    # One input takes the path without a thread pool; several take the pooled path.
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    items = [good, bad, good][:count] if count > 1 else [bad]
    batches = list(iter_batches(items, (32, 32), (0.5,) * 3, (0.5,) * 3, batch_size=4))
    assert len(batches) == 1
    batch = batches[0]
    assert set(batch.errors) == {1 if count > 1 else 0}
    assert str(bad) in next(iter(batch.errors.values()))
    if count > 1:
        assert batch.indices == [0, 2]
        assert batch.images.shape == (2, 3, 32, 32)
        assert batch.original_sizes == [(40, 50), (40, 50)]


def test_loader_single_image_is_contiguous_batch(tmp_path):
    path = tmp_path / "part.png"
    Image.fromarray(np.full((40, 50, 3), 200, dtype=np.uint8)).save(path)
    (batch,) = list(iter_batches([path], (32, 32), (0.5,) * 3, (0.5,) * 3))
    assert batch.images.shape == (1, 3, 32, 32)
    assert batch.images.flags["C_CONTIGUOUS"]
    assert batch.indices == [0]
    assert batch.original_sizes == [(40, 50)]
