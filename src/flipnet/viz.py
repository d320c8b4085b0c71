"""Pictures people would rather see than read: image grids and side-by-side comparisons."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from flipnet.io import save_image, to_uint8


def make_grid(images, *, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 (N, H, W, 3) arrays (or [-1, 1] NCHW tensors) into one uint8 (H', W', 3) grid."""
    if isinstance(images, torch.Tensor):
        images = to_uint8(images)
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("make_grid needs at least one image")
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    n = len(images)
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, im in enumerate(images):
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + im.shape[0], x:x + im.shape[1]] = im[:, :, :3]
    return grid


def side_by_side(*images: np.ndarray, pad: int = 4) -> np.ndarray:
    """Put uint8 images of equal height next to each other (before | after), resizing heights."""
    import cv2

    h = max(im.shape[0] for im in images)
    row = []
    for im in images:
        if im.shape[0] != h:
            w = round(im.shape[1] * h / im.shape[0])
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LANCZOS4)
        row.append(im)
    return make_grid(row, ncol=len(row), pad=pad)


def save_grid(path: str | os.PathLike, images, **kwargs) -> Path:
    """Write ``make_grid(images)`` as a PNG (atomically)."""
    return save_image(path, make_grid(images, **kwargs))


def save_curve(path: str | os.PathLike, steps, series: dict[str, list[float]], *,
               xlabel: str = "step", ylabel: str = "", title: str = "") -> Path:
    """A line plot of each named series over ``steps`` as a PNG (atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flipnet.io import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, values in series.items():
        ax.plot(steps, values, label=name, marker="." if len(steps) < 40 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(Path(path), buf.getvalue())
