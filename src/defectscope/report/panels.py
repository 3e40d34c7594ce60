"""Per-image panels: the image, its ground truth, heat map, predicted mask and overlay side by side.

Every heat map uses ``overlay.colorize``: the normalized score from 0 to 1,
with the decision threshold at 0.5 between green and yellow. Panels are
uint8 RGB arrays, small enough to inline in an HTML report.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from defectscope.report.overlay import colorize, mask_contour, overlay
from defectscope.scoring.processing import resize_map, resize_mask

GROUND_TRUTH_COLOUR = (255, 255, 255)
ANOMALOUS_COLOUR = (200, 30, 30)
NORMAL_COLOUR = (30, 140, 60)
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_GAP = 4
_FONT_SIZE = 11


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=_FONT_SIZE)


def tile_shape(image_shape: tuple[int, ...], tile_size: int) -> tuple[int, int]:
    """Return the (height, width) of a tile whose longer side is ``tile_size``, keeping the image's aspect ratio."""
    height, width = image_shape[:2]
    scale = tile_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize_rgb(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def _mask_tile(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Draw a boolean mask as white on black at ``shape``."""
    resized = resize_mask(mask.astype(bool), shape)
    return np.repeat((resized.astype(np.uint8) * 255)[..., None], 3, axis=2)


def _overlay_tile(image: np.ndarray, normalized_map: np.ndarray, predicted_mask: np.ndarray, ground_truth: np.ndarray | None) -> np.ndarray:
    """Blend the heat map over the image with the predicted contour (magenta) and the ground-truth contour (white)."""
    picture = overlay(image, normalized_map, predicted_mask)
    if ground_truth is not None:
        truth = resize_mask(ground_truth.astype(bool), image.shape[:2])
        picture[mask_contour(truth, width=1)] = GROUND_TRUTH_COLOUR
    return picture


def _titled(tiles: list[tuple[str, np.ndarray]], caption: str, caption_colour: tuple[int, int, int]) -> np.ndarray:
    """Lay tiles out in a row, each under its title, with a caption line below the row."""
    font = _font()
    title_height = _FONT_SIZE + 6
    caption_height = _FONT_SIZE + 8
    tile_height = max(tile.shape[0] for _, tile in tiles)
    width = sum(tile.shape[1] for _, tile in tiles) + _GAP * (len(tiles) + 1)
    height = title_height + tile_height + caption_height + _GAP

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    left = _GAP
    for title, tile in tiles:
        draw.text((left, 2), title, fill=_TEXT, font=font)
        canvas.paste(Image.fromarray(tile), (left, title_height))
        left += tile.shape[1] + _GAP

    draw.text((_GAP, title_height + tile_height + 3), caption, fill=caption_colour, font=font)
    return np.asarray(canvas)


def segmentation_panel(
    image: np.ndarray,
    normalized_map: np.ndarray,
    predicted_mask: np.ndarray,
    ground_truth: np.ndarray | None = None,
    caption: str = "",
    is_anomalous: bool | None = None,
    tile_size: int = 160,
) -> np.ndarray:
    """Draw a segmentation panel: image, ground truth (when given), heat map, predicted mask, overlay.

    Parameters
    ----------
    image:
        uint8 RGB (height, width, 3) at any size; tiles keep its aspect ratio.
    normalized_map:
        float (map_height, map_width), normalized scores with the threshold at 0.5.
    predicted_mask, ground_truth:
        bool (mask_height, mask_width), resized to the tile with nearest neighbour.
    caption:
        Text under the tiles, coloured red for an anomalous prediction and
        green for a normal one (black when ``is_anomalous`` is None).
    tile_size:
        Longer side of each tile in pixels.

    Returns
    -------
    uint8 RGB (panel_height, panel_width, 3).
    """
    shape = tile_shape(image.shape, tile_size)
    small_image = _resize_rgb(image, shape)
    small_map = resize_map(normalized_map.astype(np.float32), shape)

    tiles = [("image", small_image)]
    if ground_truth is not None:
        tiles.append(("ground truth", _mask_tile(ground_truth, shape)))
    tiles.append(("heat map", colorize(small_map)))
    tiles.append(("predicted mask", _mask_tile(predicted_mask, shape)))
    tiles.append(("overlay", _overlay_tile(small_image, small_map, resize_mask(predicted_mask.astype(bool), shape), ground_truth)))
    return _titled(tiles, caption, _verdict_colour(is_anomalous))


def classification_panel(
    image: np.ndarray,
    normalized_map: np.ndarray,
    normalized_score: float,
    is_anomalous: bool,
    caption: str = "",
    tile_size: int = 160,
) -> np.ndarray:
    """Draw a classification panel: image, heat map, overlay and a tile with the predicted label and normalized score.

    ``image`` is uint8 RGB (height, width, 3); ``normalized_map`` is float
    (map_height, map_width) with the threshold at 0.5. The score tile shows
    the score on a bar from 0 to 1 with a tick at the threshold. Returns
    uint8 RGB (panel_height, panel_width, 3).
    """
    shape = tile_shape(image.shape, tile_size)
    small_image = _resize_rgb(image, shape)
    small_map = resize_map(normalized_map.astype(np.float32), shape)
    tiles = [
        ("image", small_image),
        ("heat map", colorize(small_map)),
        ("overlay", overlay(small_image, small_map, small_map > 0.5)),
        ("prediction", _score_tile(normalized_score, is_anomalous, shape)),
    ]
    return _titled(tiles, caption, _verdict_colour(is_anomalous))


def _verdict_colour(is_anomalous: bool | None) -> tuple[int, int, int]:
    if is_anomalous is None:
        return _TEXT
    return ANOMALOUS_COLOUR if is_anomalous else NORMAL_COLOUR


def _score_tile(normalized_score: float, is_anomalous: bool, shape: tuple[int, int]) -> np.ndarray:
    """Draw the predicted label, the normalized score and a score bar coloured like the heat map."""
    height, width = shape
    canvas = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(_FONT_SIZE, height // 8))
    draw.text((6, height // 6), "ANOMALOUS" if is_anomalous else "NORMAL", fill=_verdict_colour(is_anomalous), font=font)
    draw.text((6, height // 6 + font.size + 4), f"score {normalized_score:.3f}", fill=_TEXT, font=font)

    bar_top, bar_height = int(height * 0.65), max(6, height // 10)
    bar_width = width - 12
    ramp = colorize(np.linspace(0.0, 1.0, bar_width, dtype=np.float32)[None, :].repeat(bar_height, axis=0))
    canvas.paste(Image.fromarray(ramp), (6, bar_top))
    threshold_x = 6 + bar_width // 2
    draw.line([(threshold_x, bar_top - 3), (threshold_x, bar_top + bar_height + 3)], fill=_TEXT, width=1)
    score_x = 6 + int(round(np.clip(normalized_score, 0.0, 1.0) * (bar_width - 1)))
    draw.polygon([(score_x - 4, bar_top - 7), (score_x + 4, bar_top - 7), (score_x, bar_top - 1)], fill=_TEXT)
    return np.asarray(canvas)


def colour_bar(width: int = 360, height: int = 14) -> np.ndarray:
    """Draw the heat-map colour scale with ticks at 0, 0.25, 0.5 (threshold), 0.75 and 1.

    Returns uint8 RGB (height + text rows, width + margins, 3).
    """
    font = _font()
    margin = 12
    canvas = Image.new("RGB", (width + 2 * margin, height + _FONT_SIZE + 10), _BACKGROUND)
    ramp = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, axis=0))
    canvas.paste(Image.fromarray(ramp), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = margin + int(round(value * (width - 1)))
        draw.line([(x, 0), (x, height + 2)], fill=_TEXT, width=2 if value == 0.5 else 1)
        label = "0.5 threshold" if value == 0.5 else f"{value:g}"
        text_width = draw.textlength(label, font=font)
        left = min(max(0, x - text_width / 2), canvas.width - text_width)
        draw.text((left, height + 4), label, fill=_TEXT, font=font)
    return np.asarray(canvas)

