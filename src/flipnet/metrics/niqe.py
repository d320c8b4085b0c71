"""NIQE, the "completely blind" natural image quality evaluator (Mittal, Soundararajan & Bovik,
IEEE SPL 2013). Lower is better.

Follows the official MATLAB release (niqe_release.zip / ``computequality.m``): grayscale image
on the 0..255 scale, cropped to whole 96x96 blocks; MSCN with a 7x7 Gaussian (sigma 7/6,
replicate padding); per block 18 AGGD statistics at full and at half scale (MATLAB bicubic
anti-aliased ``imresize``); a multivariate Gaussian fitted to the blocks and compared with the
pristine model by Eq. 10, sqrt((mu1-mu2)^T ((S1+S2)/2)^+ (mu1-mu2)). The pristine model is the
official one (src/flipnet/data/niqe_pristine.npz, built by scripts/extract_quality_models.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import numpy as np

from flipnet.errors import WeightsError
from flipnet.metrics.mscn import (
    matlab_imresize,
    mscn,
    nss_block_features,
    rgb_to_gray_matlab,
    split_blocks,
)
from flipnet.metrics.psnr_ssim import as_image_list, rgb_to_y

PATCH_SIZE = 96


@dataclass(frozen=True)
class NiqeModel:
    """Pristine multivariate Gaussian of the 36 NIQE features: mean (36,), covariance (36, 36)."""

    mu: np.ndarray
    cov: np.ndarray


@functools.lru_cache(maxsize=1)
def load_niqe_model() -> NiqeModel:
    """The official NIQE pristine model shipped in flipnet/data/niqe_pristine.npz."""
    ref = resources.files("flipnet") / "data" / "niqe_pristine.npz"
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
            return NiqeModel(mu=np.array(z["mu"], np.float64), cov=np.array(z["cov"], np.float64))
    except (OSError, KeyError, ValueError) as e:
        raise WeightsError(f"{ref}: NIQE pristine model missing or unreadable ({e}); rebuild it "
                           "with scripts/extract_quality_models.py") from None


def niqe_gray_features(gray: np.ndarray, *, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """The 36 NIQE statistics of every patch of a float gray (H, W) image -> (P, 36)."""
    gray = np.asarray(gray, dtype=np.float64)
    nh, nw = gray.shape[0] // patch_size, gray.shape[1] // patch_size
    if nh * nw < 2:
        raise ValueError(f"NIQE needs at least two {patch_size}x{patch_size} blocks; the image is "
                         f"{gray.shape[1]}x{gray.shape[0]}")
    gray = gray[: nh * patch_size, : nw * patch_size]
    fine = split_blocks(mscn(gray, padding="replicate"), patch_size)  # (P, 96, 96)
    half = matlab_imresize(gray / 255.0, 0.5) * 255.0
    coarse = split_blocks(mscn(half, padding="replicate"), patch_size // 2)  # (P, 48, 48)
    return np.concatenate([nss_block_features(fine, style="niqe"),
                           nss_block_features(coarse, style="niqe")], axis=1)


def niqe_from_features(feats: np.ndarray, model: NiqeModel | None = None) -> float:
    """NIQE Eq. 10 between the block features (P, 36) and the pristine model."""
    model = model or load_niqe_model()
    mu = np.nanmean(feats, axis=0)
    finite = feats[~np.isnan(feats).any(axis=1)]  # MATLAB nancov drops incomplete rows
    if len(finite) < 2:
        return float("nan")
    cov = np.cov(finite, rowvar=False)
    diff = model.mu - mu
    return float(np.sqrt(diff @ np.linalg.pinv((model.cov + cov) / 2) @ diff))


def to_luminance(rgb: np.ndarray, convert: Literal["gray", "y"]) -> np.ndarray:
    """uint8 RGB -> rounded float luminance: MATLAB ``rgb2gray`` or BT.601 Y (BasicSR)."""
    if convert == "gray":
        return rgb_to_gray_matlab(rgb)
    if convert == "y":
        return np.round(rgb_to_y(rgb))
    raise ValueError(f"unknown convert={convert!r}; use 'gray' or 'y'")


def niqe(images: np.ndarray | Sequence[np.ndarray], *, convert: Literal["gray", "y"] = "gray",
         crop_border: int = 0, patch_size: int = PATCH_SIZE) -> float | np.ndarray:
    """NIQE of uint8 RGB image(s) (Mittal 2013 Eq. 10), lower = more natural.

    ``convert="gray"`` is MATLAB ``niqe`` on an RGB image (and pyiqa's default); ``"y"`` is
    BasicSR's ``calculate_niqe`` (BT.601 Y). One (H, W, 3) image gives a float, a batch or a
    list gives an array (N,).
    """
    single = isinstance(images, np.ndarray) and images.ndim == 3
    model = load_niqe_model()
    scores = []
    for im in as_image_list(images):
        lum = to_luminance(im, convert)
        if crop_border:
            lum = lum[crop_border:-crop_border, crop_border:-crop_border]
        scores.append(niqe_from_features(niqe_gray_features(lum, patch_size=patch_size), model))
    return scores[0] if single else np.array(scores)
