"""Shared fixtures: the real-photo face from scikit-image and the optional shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FLIPNET_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real 512x512 RGB photo with one face (ships inside scikit-image)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with a reason when it is absent."""
    if not (SHARED_DATA / "utkface").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set FLIPNET_SHARED_DATA)")
    return SHARED_DATA
