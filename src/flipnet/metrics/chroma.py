"""Colour statistics of face sets, for a realism check that sees colour (issue 17).

FD-lowlevel and KID read luminance MSCN statistics only, so a synthetic LQ set can match real LQ
there while carrying colour blotches (a green eyelid, a red cheek) or a hue shift. These features
describe an image's chroma (BT.601 Cb, Cr) at two scales:

* global: mean and spread of Cb and Cr over the image;
* local: each ``patch`` x ``patch`` block's mean chroma minus the image's mean, summarised by
  the 50th, 90th and 99th percentile of its magnitude (blotches raise the upper percentiles),
  and the mean within-block chroma spread (colour noise).

``frechet_distance(chroma_features(a), chroma_features(b))`` is then "FD-chroma".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flipnet.metrics.psnr_ssim import as_image_list

# BT.601 full-range RGB -> (Cb, Cr) offsets from grey, in 8-bit levels
_TO_CBCR = np.array([[-0.168736, 0.5], [-0.331264, -0.418688], [0.5, -0.081312]])
CHROMA_FEATURE_NAMES = ("mean_cb", "mean_cr", "std_cb", "std_cr", "local_p50", "local_p90",
                        "local_p99", "within_block_std")


def chroma_planes(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float64 (H, W, 2): Cb and Cr minus 128 (0 for grey)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    return rgb.astype(np.float64) @ _TO_CBCR


def chroma_features(images: np.ndarray | Sequence[np.ndarray], *, patch: int = 8) -> np.ndarray:
    """Per-image colour statistics (``CHROMA_FEATURE_NAMES``) -> float64 (N, 8).

    A feature extractor for ``frechet_distance``; images smaller than one ``patch`` block are
    refused."""
    rows = []
    for i, im in enumerate(as_image_list(images)):
        c = chroma_planes(im)
        nh, nw = c.shape[0] // patch, c.shape[1] // patch
        if nh == 0 or nw == 0:
            raise ValueError(f"image {i}: {c.shape[:2]} is smaller than one {patch} px block")
        blocks = c[:nh * patch, :nw * patch].reshape(nh, patch, nw, patch, 2)
        block_mean = blocks.mean(axis=(1, 3))  # (nh, nw, 2)
        local = np.linalg.norm(block_mean - c.mean(axis=(0, 1)), axis=-1).ravel()
        within = blocks.std(axis=(1, 3)).mean()
        rows.append([*c.mean(axis=(0, 1)), *c.std(axis=(0, 1)),
                     *np.percentile(local, [50, 90, 99]), within])
    return np.asarray(rows, dtype=np.float64)
