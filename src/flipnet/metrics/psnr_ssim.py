"""PSNR and SSIM on RGB or on the BT.601 Y channel, as computed in BasicSR and the BFR literature.

Inputs follow the io contract: uint8 RGB ``(H, W, 3)`` (one image -> float) or ``(N, H, W, 3)``
(a batch -> float64 array (N,)). SSIM is Wang et al. 2004 with an 11x11 Gaussian window,
sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances, averaged over channels and over the
"valid" region (5 pixels from every edge), which equals ``skimage.metrics.structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # ITU-R BT.601, studio range 16..235


def as_image_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Accept one uint8 (H, W, 3), a batch (N, H, W, 3) or a list of (H, W, 3); return a list."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = [images]
        elif images.ndim == 4:
            images = list(images)
        else:
            raise ValueError(f"expected uint8 (H, W, 3) or (N, H, W, 3), got shape {images.shape}")
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 (H, W, 3) RGB, got {im.dtype} {im.shape}")
        out.append(im)
    if not out:
        raise ValueError("no images given")
    return out


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (BasicSR ``to_y_channel``)."""
    return np.asarray(rgb, dtype=np.float64) @ _Y_WEIGHTS + 16.0


def _prepare_pair(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool):
    """Validate two uint8 images/batches -> float64 (N, H, W, C) pair and a 'was single' flag."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    if a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) RGB, got {a.shape}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if crop_border < 0 or 2 * crop_border >= min(a.shape[1:3]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {a.shape[2]}x{a.shape[1]} "
                         "image")
    if crop_border:
        a = a[:, crop_border:-crop_border, crop_border:-crop_border]
        b = b[:, crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None], single
    return a.astype(np.float64), b.astype(np.float64), single


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0,
         y_channel: bool = False) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE); inf for identical images."""
    x, y, single = _prepare_pair(a, b, crop_border, y_channel)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))  # (N,)
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return float(out[0]) if single else out


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM index map of two float64 (H, W) planes over the valid region (Wang 2004 Eq. 13)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = cv2.getGaussianKernel(11, 1.5).astype(np.float64)

    def blur(p: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(p, cv2.CV_64F, g, g)[5:-5, 5:-5]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    return num / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int = 0,
         y_channel: bool = False) -> float | np.ndarray:
    """Structural similarity (Wang et al. 2004), Gaussian 11x11 sigma 1.5, mean over channels."""
    x, y, single = _prepare_pair(a, b, crop_border, y_channel)
    if min(x.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {x.shape[2]}x{x.shape[1]}")
    out = np.array([np.mean([_ssim_map(xi[..., c], yi[..., c]).mean() for c in range(x.shape[-1])])
                    for xi, yi in zip(x, y)])
    return float(out[0]) if single else out
