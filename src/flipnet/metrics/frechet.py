"""Distances between two sets of images through a feature extractor: Frechet distance and KID.

Frechet distance (FID's formula, Heusel et al. 2017): ||mu_a - mu_b||^2 +
Tr(S_a + S_b - 2 (S_a S_b)^{1/2}), with the trace of the matrix square root taken from the
eigenvalues of the symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2}, which has the same spectrum
(stable where ``scipy.linalg.sqrtm`` can return complex noise).
KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

An extractor is any callable uint8 (N, H, W, 3) -> float (N, D), or a name in ``EXTRACTORS``:
``"lowlevel"`` is the 36-D natural-scene-statistics extractor of ``flipnet.metrics.mscn``
(Frechet distance through it = "lowlevel_fd").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from flipnet.metrics.mscn import lowlevel_features
from flipnet.metrics.psnr_ssim import as_image_list

Extractor = Callable[[np.ndarray], np.ndarray]
EXTRACTORS: dict[str, Extractor] = {"lowlevel": lowlevel_features}


@dataclass(frozen=True)
class KidResult:
    """KID estimate: mean and standard deviation of unbiased MMD^2 over subsets."""

    mean: float
    std: float
    num_subsets: int
    subset_size: int


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a feature matrix (N, D) with N >= 2 and finite values -> float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name}: expected features (N >= 2, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return x


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D)."""
    x = _features(features, "features")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray,
                                cov_b: np.ndarray) -> float:
    """Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b) (Heusel 2017, Eq. in Sec. 3)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise ValueError(f"statistics differ in shape: {mu_a.shape}/{cov_a.shape} vs "
                         f"{mu_b.shape}/{cov_b.shape}")
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a  # same nonzero spectrum as cov_a @ cov_b
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, D) and (N_b, D)."""
    return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski 2018, Eq. 3)."""
    d = x.shape[1]
    kxx, kyy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, *,
                              generator: np.random.Generator, num_subsets: int = 100,
                              subset_size: int = 1000) -> KidResult:
    """KID: unbiased cubic-kernel MMD^2 averaged over random subsets (Binkowski et al. 2018)."""
    a, b = _features(features_a, "features_a"), _features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    size = min(subset_size, len(a), len(b))
    vals = [_mmd2_unbiased(a[generator.choice(len(a), size, replace=False)],
                           b[generator.choice(len(b), size, replace=False)])
            for _ in range(num_subsets)]
    return KidResult(float(np.mean(vals)), float(np.std(vals)), num_subsets, size)


def extract_features(images: np.ndarray | Sequence[np.ndarray], extractor: Extractor | str, *,
                     batch_size: int = 64, progress: bool = True, desc: str = "features"
                     ) -> np.ndarray:
    """Run an extractor (callable or name in EXTRACTORS) over images in batches -> (N, D)."""
    if isinstance(extractor, str):
        if extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {extractor!r}; known: {sorted(EXTRACTORS)}")
        extractor = EXTRACTORS[extractor]
    ims = as_image_list(images)
    same_size = len({im.shape for im in ims}) == 1
    step = batch_size if same_size else 1
    out = []
    for i in tqdm(range(0, len(ims), step), desc=desc, disable=not progress, leave=False):
        out.append(np.asarray(extractor(np.stack(ims[i:i + step])), dtype=np.float64))
    return np.concatenate(out, axis=0)


def frechet_distance_images(set_a: np.ndarray | Sequence[np.ndarray],
                            set_b: np.ndarray | Sequence[np.ndarray],
                            extractor: Extractor | str = "lowlevel", *, batch_size: int = 64,
                            progress: bool = True) -> float:
    """Frechet distance between two image sets (uint8 RGB) in the extractor's feature space."""
    fa = extract_features(set_a, extractor, batch_size=batch_size, progress=progress, desc="set A")
    fb = extract_features(set_b, extractor, batch_size=batch_size, progress=progress, desc="set B")
    return frechet_distance(fa, fb)


def kid_images(set_a: np.ndarray | Sequence[np.ndarray], set_b: np.ndarray | Sequence[np.ndarray],
               extractor: Extractor | str = "lowlevel", *, generator: np.random.Generator,
               num_subsets: int = 100, subset_size: int = 1000, batch_size: int = 64,
               progress: bool = True) -> KidResult:
    """KID between two image sets (uint8 RGB) in the extractor's feature space."""
    fa = extract_features(set_a, extractor, batch_size=batch_size, progress=progress, desc="set A")
    fb = extract_features(set_b, extractor, batch_size=batch_size, progress=progress, desc="set B")
    return kernel_inception_distance(fa, fb, generator=generator, num_subsets=num_subsets,
                                     subset_size=subset_size)
