"""Colour statistics for the colour-aware realism check (issue 17): FD-lowlevel reads luminance
only, so these must see colour blotches and hue shifts that it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from flipnet.metrics.chroma import CHROMA_FEATURE_NAMES, chroma_features, chroma_planes
from flipnet.metrics.frechet import frechet_distance
from flipnet.metrics.mscn import lowlevel_features


def _faces(n: int, seed: int) -> np.ndarray:
    """Skin-toned images with smooth shading and mild noise (uint8 (n, 128, 128, 3))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    out = []
    for _ in range(n):
        tone = np.array([200, 150, 120]) + rng.normal(0, 8, 3)
        shade = 0.85 + 0.15 * np.sin(np.pi * (xx * rng.uniform(0.5, 1.5) + yy))
        im = tone * shade[..., None] + rng.normal(0, 4, (128, 128, 3))
        out.append(np.clip(im, 0, 255).astype(np.uint8))
    return np.stack(out)


def _blotched(faces: np.ndarray, seed: int) -> np.ndarray:
    """The same faces with a green 16 x 16 blotch somewhere (luma kept about equal)."""
    rng = np.random.default_rng(seed)
    out = faces.astype(np.int16).copy()
    for im in out:
        y, x = rng.integers(16, 96, 2)
        im[y:y + 16, x:x + 16] += np.array([-30, 25, -30], dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def test_chroma_planes_are_bt601_offsets_from_grey():
    px = np.array([[[255, 0, 0], [128, 128, 128], [0, 0, 255]]], dtype=np.uint8)
    c = chroma_planes(px)
    assert np.allclose(c[0, 0], [-43.03, 127.5], atol=0.01)  # red: Cb below, Cr far above
    assert np.allclose(c[0, 1], [0.0, 0.0], atol=1e-9)  # grey has no chroma
    assert np.allclose(c[0, 2], [127.5, -20.73], atol=0.01)  # blue


def test_a_blotch_raises_the_upper_local_percentile_only():
    faces = _faces(1, seed=0)
    clean, blotched = chroma_features(faces)[0], chroma_features(_blotched(faces, 1))[0]
    col = {name: i for i, name in enumerate(CHROMA_FEATURE_NAMES)}
    assert blotched[col["local_p99"]] > clean[col["local_p99"]] + 8
    assert abs(blotched[col["local_p50"]] - clean[col["local_p50"]]) < 2
    assert np.allclose(chroma_features(np.full((1, 32, 32, 3), 90, np.uint8)), 0)


def test_fd_chroma_sees_blotches_that_fd_lowlevel_does_not():
    a, b = _faces(60, seed=1), _faces(60, seed=2)
    spoiled = _blotched(b, seed=3)
    same = frechet_distance(chroma_features(a), chroma_features(b))
    assert frechet_distance(chroma_features(a), chroma_features(spoiled)) > 5 * same
    # the luminance statistics move far less than the colour ones
    low_same = frechet_distance(lowlevel_features(a), lowlevel_features(b))
    low_spoiled = frechet_distance(lowlevel_features(a), lowlevel_features(spoiled))
    assert low_spoiled < 3 * low_same + 1e-3


def test_too_small_images_are_refused_with_their_index():
    with pytest.raises(ValueError, match="image 1"):
        chroma_features([np.zeros((16, 16, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)])
