"""Folder dataset of aligned face crops and a seeded shuffle-and-flip sampler.

``FaceFolder`` reads every image once when it is built (unreadable files are skipped with a
warning then, never mid-training), resizes to the model size (area interpolation when shrinking,
cubic when enlarging, centre square crop first) and keeps uint8 pixels in memory.
``ShuffleFlipSampler`` yields ``(index, flip)`` pairs whose order and flips are a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm.auto import tqdm

from flipnet.errors import FlipnetError, ImageReadError
from flipnet.io import list_images, load_image, to_tensor
from flipnet.splits import in_split


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 (H, W, 3) to a square and resize to (size, size, 3), area/cubic."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    rgb = rgb[y:y + s, x:x + s]
    if s == size:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if s > size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


class FaceFolder(Dataset):
    """Aligned face crops under ``root`` as float (3, size, size) tensors in [-1, 1]."""

    def __init__(self, root: str | os.PathLike, size: int, *, split: str | None = "train",
                 progress: bool = True):
        self.root, self.size = Path(root), size
        paths = in_split(list_images(self.root), split)  # held-out test faces never train
        pixels, kept, self.skipped = [], [], {}
        for p in tqdm(paths, desc=f"reading {self.root.name}", disable=not progress):
            try:
                pixels.append(resize_square(load_image(p).rgb, size))
                kept.append(p)
            except ImageReadError as e:
                self.skipped[str(p)] = e.problem
                warnings.warn(f"skipped {p}: {e.problem}", stacklevel=2)
        if not kept:
            raise FlipnetError(f"{self.root}: no readable images found "
                               f"({len(paths)} files tried)")
        self.paths = kept
        self.pixels = np.stack(pixels)  # (N, size, size, 3) uint8

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> torch.Tensor:
        """``key`` = index or (index, flip) -> (3, size, size) float in [-1, 1]."""
        index, flip = key if isinstance(key, tuple) else (key, False)
        rgb = self.pixels[index]
        if flip:
            rgb = rgb[:, ::-1]
        return to_tensor(np.ascontiguousarray(rgb))[0]


class ShuffleFlipSampler(Sampler):
    """Yields (index, flip): a permutation and coin flips drawn from Generator(seed + epoch)."""

    def __init__(self, n: int, *, seed: int, hflip: bool = True):
        self.n, self.seed, self.hflip, self.epoch = n, seed, hflip, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is yielded next (called by Accelerate's loaders)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        flips = (torch.randint(0, 2, (self.n,), generator=g).tolist() if self.hflip
                 else [0] * self.n)
        return iter([(i, bool(f)) for i, f in zip(order, flips)])
