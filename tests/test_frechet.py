"""Frechet distance against a direct scipy.linalg.sqrtm computation, KID against a naive MMD, the
image-level wrappers, and the low-level FD / KID on real faces (clean vs degraded vs halves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from flipnet.metrics.frechet import (
    EXTRACTORS,
    extract_features,
    frechet_distance,
    frechet_distance_from_stats,
    frechet_distance_images,
    gaussian_stats,
    kernel_inception_distance,
    kid_images,
)


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (as pytorch-fid does)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


@pytest.mark.parametrize("n_a,n_b,dim,seed",
                         [(500, 400, 3, 0), (300, 300, 16, 1), (200, 150, 36, 2)])
def test_frechet_matches_scipy_sqrtm(n_a, n_b, dim, seed):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim))
    a = rng.normal(size=(n_a, dim)) @ mix
    b = rng.normal(0.3, 1.5, size=(n_b, dim)) @ mix + rng.normal(size=dim)
    ours, ref = frechet_distance(a, b), _scipy_frechet(a, b)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-9)
    # one dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2
    mu_a, cov_a = np.array([1.0]), np.array([[4.0]])
    mu_b, cov_b = np.array([-1.0]), np.array([[9.0]])
    assert frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(4.0 + 1.0)
    # more dimensions than samples: singular covariances are fine and symmetric
    few_a, few_b = rng.normal(size=(10, 30)), rng.normal(size=(12, 30)) + 0.2
    assert frechet_distance(few_a, few_b) == pytest.approx(frechet_distance(few_b, few_a), rel=1e-6)
    assert frechet_distance(few_a, few_b) == pytest.approx(_scipy_frechet(few_a, few_b), rel=1e-4)


def test_frechet_rejects_bad_features():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(np.zeros((4, 3)), np.ones((4, 2)))


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(u, v):
        return (u @ v / d + 1) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_equals_naive_unbiased_mmd_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)), rng.normal(0.5, 1.0, size=(20, 4))
    full = kernel_inception_distance(a, b, generator=np.random.default_rng(0), num_subsets=3,
                                     subset_size=20)
    assert full.mean == pytest.approx(_naive_mmd2(a, b), rel=1e-10) and full.std < 1e-12
    r1 = kernel_inception_distance(a, b, generator=np.random.default_rng(5), subset_size=10)
    r2 = kernel_inception_distance(a, b, generator=np.random.default_rng(5), subset_size=10)
    assert r1 == r2 and r1.subset_size == 10 and r1.std > 0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same = kernel_inception_distance(a, b, generator=np.random.default_rng(0), subset_size=200)
    diff = kernel_inception_distance(a, b * 1.5, generator=np.random.default_rng(0),
                                     subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert diff.mean > 10 * max(same.std, abs(same.mean))


def test_image_wrappers_use_the_extractor(astronaut):
    tiles = np.stack([astronaut[i:i + 64, j:j + 64] for i in range(0, 512, 64)
                      for j in range(0, 256, 64)])  # (32, 64, 64, 3)

    def mean_colour(batch: np.ndarray) -> np.ndarray:
        return batch.reshape(len(batch), -1, 3).mean(axis=1)

    fd = frechet_distance_images(tiles[:16], tiles[16:], mean_colour, batch_size=5, progress=False)
    assert fd == pytest.approx(frechet_distance(mean_colour(tiles[:16]), mean_colour(tiles[16:])))
    feats = extract_features(list(tiles[:6]), "lowlevel", progress=False)
    assert feats.shape == (6, 36) and "lowlevel" in EXTRACTORS
    kid = kid_images(tiles[:16], tiles[16:], generator=np.random.default_rng(0), num_subsets=5,
                     subset_size=8, progress=False)
    assert kid.num_subsets == 5 and np.isfinite(kid.mean)
    with pytest.raises(ValueError, match="unknown extractor 'nope'"):
        extract_features(tiles, "nope", progress=False)


def _utkface_halves_and_degraded(shared_data, n: int, seed: int):
    """n + n UTKFace faces (seeded draw) and the second half degraded with the codeformer preset."""
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size
    from flipnet.io import list_images, load_image, to_tensor, to_uint8

    files = list_images(shared_data / "utkface")
    pick = np.random.default_rng(seed).choice(len(files), 2 * n, replace=False)
    ims = np.stack([load_image(files[i]).rgb for i in pick])
    cfg = preset_for_size("codeformer-unscaled", ims.shape[1])  # heavy: clearly degraded
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image ops: extra threads on a shared CPU only cost time
    try:
        lq = to_uint8(degrade_images(to_tensor(ims[n:]), cfg, seed=seed)[0])
    finally:
        torch.set_num_threads(threads)
    return ims[:n], ims[n:], lq


@pytest.mark.slow
def test_lowlevel_fd_and_kid_separate_clean_from_degraded_faces(shared_data):
    half_a, half_b, degraded_b = _utkface_halves_and_degraded(shared_data, 150, seed=3)
    fa, fb, fl = (EXTRACTORS["lowlevel"](x) for x in (half_a, half_b, degraded_b))
    fd_same, fd_lq = frechet_distance(fa, fb), frechet_distance(fa, fl)
    assert fd_lq > 50 * fd_same
    kid_same = kernel_inception_distance(fa, fb, generator=np.random.default_rng(0), subset_size=75)
    kid_lq = kernel_inception_distance(fa, fl, generator=np.random.default_rng(0), subset_size=75)
    assert abs(kid_same.mean) < 3 * kid_same.std + 1e-3  # consistent with zero
    assert kid_lq.mean > 10 * kid_lq.std and kid_lq.mean > 20 * abs(kid_same.mean)
