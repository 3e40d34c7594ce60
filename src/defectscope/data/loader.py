"""Batched, prefetching image loading into model-ready arrays.

Decoding and resizing run in a small thread pool (PIL releases the GIL for
both) while the caller runs the network on the previous batch. A file that
cannot be read becomes an error entry; the rest of its batch still loads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectscope.data.image_io import ImageReadError, read_image
from defectscope.scoring.processing import preprocess


@dataclass
class Batch:
    """Preprocessed images and the errors of the files that failed.

    ``images`` is float32 (n_ok, 3, height, width), or None when every file
    failed. ``indices`` gives each row's position in the input sequence and
    ``original_sizes`` each row's (height, width) before resizing.
    ``errors`` maps input positions to messages.
    """

    images: np.ndarray | None
    indices: list[int]
    original_sizes: list[tuple[int, int]]
    errors: dict[int, str]


def _load_one(item: str | Path | np.ndarray, input_size: tuple[int, int], mean, std) -> tuple[np.ndarray, tuple[int, int]]:
    image = item if isinstance(item, np.ndarray) else read_image(item)
    return preprocess(image, input_size, mean, std), image.shape[:2]


def iter_batches(
    items: Sequence[str | Path | np.ndarray],
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 16,
    workers: int = 2,
) -> Iterator[Batch]:
    """Yield ``Batch`` objects over ``items`` (paths or uint8 RGB arrays), in order."""

    def load_safely(index: int):
        try:
            return index, _load_one(items[index], input_size, mean, std), None
        except (ImageReadError, ValueError, OSError) as error:
            return index, None, str(error)

    if len(items) == 1:
        # One image has nothing to overlap with; starting the pool cost 1.5 ms of 8 per call.
        yield _to_batch([load_safely(0)])
        return

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        starts = range(0, len(items), batch_size)
        pending = None
        for start in starts:
            indices = range(start, min(start + batch_size, len(items)))
            submitted = [pool.submit(load_safely, index) for index in indices]
            if pending is not None:
                yield _to_batch(future.result() for future in pending)
            pending = submitted
        if pending is not None:
            yield _to_batch(future.result() for future in pending)


def _to_batch(results) -> Batch:
    """Build a ``Batch`` from (index, (array, size) or None, error) results, in input order."""
    arrays, indices, sizes, errors = [], [], [], {}
    for index, loaded, error in results:
        if loaded is None:
            errors[index] = error
            continue
        arrays.append(loaded[0])
        sizes.append(loaded[1])
        indices.append(index)
    images = np.stack(arrays) if arrays else None
    return Batch(images, indices, sizes, errors)
