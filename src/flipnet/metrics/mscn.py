"""Natural-scene statistics shared by NIQE and BRISQUE, and a low-level feature extractor.

MSCN coefficients (mean-subtracted contrast-normalised luminance, Mittal et al. 2012, Eq. 1),
generalised-Gaussian fits (GGD on MSCN, AGGD on the four paired products), MATLAB's
``rgb2gray`` and bicubic anti-aliased ``imresize``: one home for the code both metrics use.
Every fit works on a batch of blocks at once, ``(P, h, w)``, so per-patch features are cheap.

``lowlevel_features`` turns uint8 images into 36-D BRISQUE-style statistics (18 per scale)
averaged over patches: features that see blur, noise and JPEG blocking, unlike identity
embeddings, for Frechet distance / KID between image sets (``flipnet.metrics.frechet``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.special import gamma

from flipnet.metrics.psnr_ssim import as_image_list

GAMMA_GRID = np.arange(0.2, 10.001, 0.001)  # the shape grid of the MATLAB releases, 9801 values
BRISQUE_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # circshift offsets of brisque_feature.m
NIQE_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # computefeature.m (same pairs under wrap-around)
_MATLAB_GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def rgb_to_gray_matlab(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of uint8 RGB (..., H, W, 3): BT.601 luma rounded to integers, float64."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 (..., H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    return np.floor(rgb.astype(np.float64) @ _MATLAB_GRAY + 0.5)  # im2uint8 rounds half up


@functools.lru_cache(maxsize=8)
def gaussian_window_1d(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """Normalised 1-D Gaussian taps; their outer product is MATLAB ``fspecial('gaussian')``."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def mscn(gray: np.ndarray, *, padding: Literal["replicate", "zero"] = "replicate",
         size: int = 7, sigma: float = 7 / 6, c: float = 1.0) -> np.ndarray:
    """MSCN coefficients (Mittal 2012 Eq. 1): (I - mu) / (sigma + c), 7x7 Gaussian, sigma 7/6.

    ``padding="replicate"`` is NIQE's ``imfilter(..., 'replicate')``; ``"zero"`` is BRISQUE's
    ``filter2(..., 'same')``. ``gray`` is float (H, W) on the 0..255 scale.
    """
    gray = np.asarray(gray, dtype=np.float64)
    mode = {"replicate": "nearest", "zero": "constant"}[padding]
    g = gaussian_window_1d(size, sigma)

    def blur(a: np.ndarray) -> np.ndarray:
        a = ndimage.correlate1d(a, g, axis=-2, mode=mode, cval=0.0)
        return ndimage.correlate1d(a, g, axis=-1, mode=mode, cval=0.0)

    mu = blur(gray)
    sd = np.sqrt(np.abs(blur(gray * gray) - mu * mu))
    return (gray - mu) / (sd + c)


def _nearest_on_grid(table: tuple[np.ndarray, np.ndarray, np.ndarray],
                     values: np.ndarray) -> np.ndarray:
    """Index of the grid entry closest to each value (first on ties, 0 for NaN), like MATLAB min."""
    table, order, sorted_table = table
    pos = np.clip(np.searchsorted(sorted_table, values), 1, len(table) - 1)
    lo, hi = order[pos - 1], order[pos]
    d_lo, d_hi = np.abs(table[lo] - values), np.abs(table[hi] - values)
    pick = np.where((d_lo < d_hi) | ((d_lo == d_hi) & (lo < hi)), lo, hi)
    return np.where(np.isnan(values), 0, pick)


def _with_order(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lookup table with its sort order and sorted copy, for ``_nearest_on_grid``."""
    order = np.argsort(table, kind="stable")
    return table, order, table[order]


@functools.lru_cache(maxsize=1)
def _ratio_tables() -> tuple[tuple, tuple]:
    """rho(alpha) of the GGD and r(alpha) of the AGGD on GAMMA_GRID (estimate*param.m)."""
    a = GAMMA_GRID
    r_aggd = gamma(2 / a) ** 2 / (gamma(1 / a) * gamma(3 / a))
    return _with_order(1.0 / r_aggd), _with_order(r_aggd)


def ggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moment-matching GGD fit over the last axis (estimateggdparam.m): (alpha, sigma)."""
    x = np.asarray(x, dtype=np.float64)
    sigma_sq = np.mean(x * x, axis=-1)
    e_abs = np.mean(np.abs(x), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = sigma_sq / e_abs**2
    rho_table, _ = _ratio_tables()
    return GAMMA_GRID[_nearest_on_grid(rho_table, rho)], np.sqrt(sigma_sq)


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric GGD fit over the last axis (estimateaggdparam.m): (alpha, left_std, right_std)."""
    x = np.asarray(x, dtype=np.float64)
    sq = x * x
    neg, pos = x < 0, x > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        left_std = np.sqrt(np.sum(sq * neg, axis=-1) / np.sum(neg, axis=-1))
        right_std = np.sqrt(np.sum(sq * pos, axis=-1) / np.sum(pos, axis=-1))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x), axis=-1) ** 2 / np.mean(sq, axis=-1)
        r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    _, r_table = _ratio_tables()
    return GAMMA_GRID[_nearest_on_grid(r_table, r_norm)], left_std, right_std


def nss_block_features(blocks: np.ndarray, *, style: Literal["brisque", "niqe"]) -> np.ndarray:
    """18 statistics per MSCN block (P, h, w) -> (P, 18): shape/scale fits of MSCN and 4 products.

    ``"brisque"``: [alpha, sigma^2] of a GGD, then per product [alpha, mean, l^2, r^2]
    (brisque_feature.m). ``"niqe"``: [alpha, (beta_l+beta_r)/2] of an AGGD, then per product
    [alpha, mean, beta_l, beta_r] (computefeature.m). Products use circular shifts, as in both.
    """
    blocks = np.asarray(blocks, dtype=np.float64)
    flat = blocks.reshape(len(blocks), -1)  # (P, h*w)
    if style == "brisque":
        alpha, sigma = ggd_fit(flat)
        cols, shifts = [alpha, sigma**2], BRISQUE_SHIFTS
    elif style == "niqe":
        alpha, left, right = aggd_fit(flat)
        scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
        cols, shifts = [alpha, (left + right) * scale / 2], NIQE_SHIFTS
    else:
        raise ValueError(f"unknown style {style!r}; use 'brisque' or 'niqe'")
    for shift in shifts:
        pair = (blocks * np.roll(blocks, shift, axis=(1, 2))).reshape(len(blocks), -1)
        alpha, left, right = aggd_fit(pair)
        scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
        beta_l, beta_r = left * scale, right * scale
        mean = (beta_r - beta_l) * gamma(2 / alpha) / gamma(1 / alpha)  # NIQE Eq. 8
        if style == "brisque":
            cols += [alpha, mean, left**2, right**2]
        else:
            cols += [alpha, mean, beta_l, beta_r]
    return np.stack(cols, axis=1)


def split_blocks(image: np.ndarray, block: int) -> np.ndarray:
    """Non-overlapping block x block tiles of (H, W), row-major, remainder cropped -> (P, b, b)."""
    nh, nw = image.shape[0] // block, image.shape[1] // block
    tiles = image[: nh * block, : nw * block].reshape(nh, block, nw, block)
    return tiles.transpose(0, 2, 1, 3).reshape(nh * nw, block, block)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys bicubic kernel (a = -0.5), as in MATLAB imresize."""
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@functools.lru_cache(maxsize=32)
def _resize_taps(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights (out, taps) of MATLAB ``imresize`` bicubic + anti-aliasing."""
    out_len = int(np.ceil(in_len * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None]  # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])  # symmetric edges
    return mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)], w


def matlab_imresize(gray: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(I, scale)`` (bicubic, anti-aliased) of a float (H, W) image."""
    gray = np.asarray(gray, dtype=np.float64)
    idx, w = _resize_taps(gray.shape[0], float(scale))
    gray = np.einsum("ok,okw->ow", w, gray[idx])  # rows first, as MATLAB for equal scales
    idx, w = _resize_taps(gray.shape[1], float(scale))
    return np.einsum("ok,hok->ho", w, gray[:, idx])


def patch_nss_features(gray: np.ndarray, *, patch_size: int = 64) -> np.ndarray:
    """BRISQUE-style 36-D statistics of every patch of a gray image (two scales) -> (P, 36)."""
    gray = np.asarray(gray, dtype=np.float64)
    if min(gray.shape) < patch_size:
        raise ValueError(f"image {gray.shape[1]}x{gray.shape[0]} is smaller than one "
                         f"{patch_size}x{patch_size} patch")
    nh, nw = gray.shape[0] // patch_size, gray.shape[1] // patch_size
    gray = gray[: nh * patch_size, : nw * patch_size]
    fine = split_blocks(mscn(gray), patch_size)  # (P, p, p)
    coarse = split_blocks(mscn(matlab_imresize(gray, 0.5)), patch_size // 2)  # (P, p/2, p/2)
    return np.concatenate([nss_block_features(fine, style="brisque"),
                           nss_block_features(coarse, style="brisque")], axis=1)


def lowlevel_patch_features(images: np.ndarray | Sequence[np.ndarray], *,
                            patch_size: int = 64) -> np.ndarray:
    """Per-patch 36-D NSS features of uint8 RGB images, all patches stacked -> (sum P, 36)."""
    rows = [patch_nss_features(rgb_to_gray_matlab(im), patch_size=patch_size)
            for im in as_image_list(images)]
    return np.concatenate(rows, axis=0)


def lowlevel_features(images: np.ndarray | Sequence[np.ndarray], *,
                      patch_size: int = 64) -> np.ndarray:
    """Low-level quality features: per-image mean of per-patch 36-D NSS statistics -> (N, 36).

    A feature extractor for ``frechet_distance_images`` (uint8 NHWC -> float64 (N, D)).
    Patches whose fit is undefined (flat regions) are ignored; an image with no valid patch
    gets zeros for those columns and a warning.
    """
    out = []
    for i, im in enumerate(as_image_list(images)):
        feats = patch_nss_features(rgb_to_gray_matlab(im), patch_size=patch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pooled = np.nanmean(feats, axis=0)
        if np.isnan(pooled).any():
            warnings.warn(f"image {i}: flat content, {int(np.isnan(pooled).sum())} low-level "
                          "statistics undefined and set to 0", stacklevel=2)
            pooled = np.nan_to_num(pooled)
        out.append(pooled)
    return np.stack(out, axis=0)
