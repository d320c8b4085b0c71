"""Classifier two-sample test: Wilson interval, determinism, power on a texture difference, no false
alarm on one distribution, input errors, and UTKFace clean vs degraded vs halves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import stats

from flipnet.metrics.two_sample import (
    TinyCritic,
    TwoSampleResult,
    classifier_two_sample_test,
    wilson_interval,
)


def _smooth_faces(n: int, seed: int, *, noise: float = 0.0, size: int = 72) -> np.ndarray:
    """Blurry random colour fields (n, size, size, 3), optionally with fine-grained noise added."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = cv2.GaussianBlur(rng.normal(128, 60, (size, size, 3)), (0, 0), 4.0)
        out.append(np.clip(base * 2.0 - 128 + rng.normal(0, noise, base.shape), 0, 255))
    return np.stack(out).round().astype(np.uint8)


@pytest.mark.parametrize("k,n", [(0, 10), (7, 20), (50, 100), (100, 100)])
def test_wilson_bounds_solve_the_score_equation(k, n):
    lo, hi = wilson_interval(k, n)
    z = stats.norm.ppf(0.975)
    p_hat = k / n
    assert lo <= p_hat <= hi and 0 <= lo and hi <= 1
    for bound in (lo, hi):
        if 0 < bound < 1:  # (p_hat - p)^2 = z^2 p (1 - p) / n at both ends (Wilson 1927)
            assert (p_hat - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / n, rel=1e-9)
    narrower = wilson_interval(k, n, confidence=0.8)
    assert lo <= narrower[0] and narrower[1] <= hi


def test_critic_is_tiny_and_seeded():
    import torch

    a, b = TinyCritic(), TinyCritic()
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert 3_000 < sum(p.numel() for p in a.parameters()) < 10_000
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.zeros(2, 3, 64, 64)).shape == (2,)


def test_detects_added_noise_and_is_deterministic():
    clean, noisy = _smooth_faces(60, 0), _smooth_faces(60, 1, noise=12.0)
    res = classifier_two_sample_test(clean, noisy, seed=0, epochs=6)
    assert isinstance(res, TwoSampleResult) and res.n_test == 60 and res.n_train == 60
    assert res.accuracy >= 0.9 and res.ci_low > 0.5 and res.p_value < 1e-6
    assert classifier_two_sample_test(clean, noisy, seed=0, epochs=6) == res


def test_one_distribution_is_not_separated():
    a, b = _smooth_faces(60, 2), _smooth_faces(60, 3)
    res = classifier_two_sample_test(a, b, seed=1, epochs=6)
    assert res.ci_low < 0.5 < res.ci_high and res.p_value > 0.01


def test_unbalanced_sets_and_resize_and_errors():
    a, b = _smooth_faces(30, 4, size=80), _smooth_faces(12, 5, noise=12.0, size=80)
    res = classifier_two_sample_test(list(a), b, seed=0, epochs=2, size=32, resize=48)
    assert res.n_test + res.n_train == 2 * 12
    with pytest.raises(ValueError, match="at least 2 images"):
        classifier_two_sample_test(a[:1], b, epochs=1)
    with pytest.raises(ValueError, match="image 0 is 80x80, smaller than the 96px crop"):
        classifier_two_sample_test(a, b, size=96, epochs=1)


@pytest.mark.slow
def test_separates_clean_from_degraded_faces_but_not_halves(shared_data):
    from test_frechet import _utkface_halves_and_degraded

    half_a, half_b, degraded_b = _utkface_halves_and_degraded(shared_data, 150, seed=4)
    same = classifier_two_sample_test(half_a, half_b, seed=0)
    lq = classifier_two_sample_test(half_a, degraded_b, seed=0)
    assert same.ci_low < 0.5 < same.ci_high
    assert lq.accuracy > 0.85 and lq.ci_low > 0.75
