"""Shared fixtures: paths to the real datasets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DEFECTSCOPE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
BOTTLE = SHARED_DATA / "mvtec_ad" / "bottle"
MAGNETIC_TILE_CSV = SHARED_DATA / "magnetic_tile" / "split.csv"

needs_bottle = pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"MVTec AD bottle not found at {BOTTLE}")
needs_magnetic_tile = pytest.mark.skipif(not MAGNETIC_TILE_CSV.is_file(), reason=f"magnetic tile split not found at {MAGNETIC_TILE_CSV}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Tests never try to download weights: this machine, like CI, has no route to the model hubs.
    monkeypatch.setenv("DEFECTSCOPE_OFFLINE", "1")
