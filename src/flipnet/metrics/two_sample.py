"""Classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017): can a small CNN tell set A from B?

Both sets are balanced to the same count and split into train and held-out halves per class;
a tiny convolutional network (about 6k parameters, global mean and log-variance pooling, so it
looks at texture and quality rather than layout) is trained on CPU on random ``size`` x ``size``
crops at the images' own resolution (resizing would wipe out the blur and noise it should see).
Held-out accuracy near 0.5 means the sets are indistinguishable to it; the Wilson interval and
a one-sided exact binomial p-value (H0: accuracy = 0.5) say how sure that is.
All randomness (subsampling, split, initialisation, batches, flips) comes from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import stats
from torch import nn

from flipnet.metrics.psnr_ssim import as_image_list


@dataclass(frozen=True)
class TwoSampleResult:
    """Held-out accuracy of the A-vs-B classifier with its confidence interval."""

    accuracy: float
    ci_low: float
    ci_high: float
    n_test: int
    p_value: float  # one-sided exact binomial test of accuracy > 0.5
    n_train: int


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


class TinyCritic(nn.Module):
    """Three stride-2 3x3 convolutions (3->8->16->32), per-channel mean and log-variance
    pooling (texture energy, which blur and noise change), one logit."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Linear(8 * width, 1)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-uniform weights and zero biases, drawn from ``generator``."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=0.2, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> logits (B,)."""
        f = self.features(x)  # (B, 4w, H/8, W/8)
        pooled = torch.cat([f.mean(dim=(2, 3)), torch.log(f.var(dim=(2, 3)) + 1e-4)], dim=1)
        return self.head(pooled).squeeze(1)


def _as_tensors(images: Sequence[np.ndarray], size: int, resize: int | None) -> list[torch.Tensor]:
    """uint8 images -> list of uint8 (3, H, W) tensors, optionally resized to resize x resize."""
    out = []
    for i, im in enumerate(images):
        if resize is not None and im.shape[:2] != (resize, resize):
            interp = cv2.INTER_AREA if min(im.shape[:2]) >= resize else cv2.INTER_CUBIC
            im = cv2.resize(im, (resize, resize), interpolation=interp)
        if min(im.shape[:2]) < size:
            raise ValueError(f"image {i} is {im.shape[1]}x{im.shape[0]}, smaller than the "
                             f"{size}px crop; pass resize= or a smaller size=")
        out.append(torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1))
    return out


def _random_crops(ims: list[torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
    """One random size x size crop per image, random horizontal flip -> float (B, 3, s, s)."""
    crops = []
    for im in ims:
        top = int(torch.randint(im.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(im.shape[2] - size + 1, (1,), generator=gen))
        crop = im[:, top:top + size, left:left + size]
        crops.append(crop.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else crop)
    return torch.stack(crops).float() / 127.5 - 1.0


def _grid_crops(im: torch.Tensor, size: int) -> torch.Tensor:
    """Five fixed crops (4 corners + centre) of one image -> float (5, 3, s, s)."""
    h, w = im.shape[1:]
    corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
               ((h - size) // 2, (w - size) // 2)]
    crops = [im[:, top:top + size, left:left + size] for top, left in corners]
    return torch.stack(crops).float() / 127.5 - 1.0


def classifier_two_sample_test(a: np.ndarray | Sequence[np.ndarray],
                               b: np.ndarray | Sequence[np.ndarray], *, seed: int = 0,
                               epochs: int = 20, size: int = 64, resize: int | None = None,
                               test_fraction: float = 0.5, batch_size: int = 32, lr: float = 1e-2,
                               width: int = 8, confidence: float = 0.95,
                               num_threads: int | None = 1) -> TwoSampleResult:
    """Train a tiny CNN on random size-px crops to separate A from B; held-out accuracy + CI.

    Held-out images are classified by the mean logit of five fixed crops. 0.5 = the sets are
    indistinguishable to the critic. ``resize`` first brings every image to resize x resize.
    ``num_threads``: torch threads while this runs (restored afterwards; the network is so small
    that more threads only add overhead); None leaves torch's setting alone.
    """
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _run_test(a, b, seed=seed, epochs=epochs, size=size, resize=resize,
                         test_fraction=test_fraction, batch_size=batch_size, lr=lr, width=width,
                         confidence=confidence)
    finally:
        torch.set_num_threads(previous)


def _run_test(a, b, *, seed, epochs, size, resize, test_fraction, batch_size, lr, width,
              confidence) -> TwoSampleResult:
    """The body of ``classifier_two_sample_test``."""
    ims_a, ims_b = as_image_list(a), as_image_list(b)
    gen = torch.Generator().manual_seed(seed)
    n = min(len(ims_a), len(ims_b))
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"need at least 2 images per set for a split, got {len(ims_a)} and "
                         f"{len(ims_b)}")

    # balanced subsample and per-class split
    def pick(ims: list[np.ndarray]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        idx = torch.randperm(len(ims), generator=gen)[:n].tolist()
        x = _as_tensors([ims[i] for i in idx], size, resize)
        return x[n_test:], x[:n_test]

    train_a, test_a = pick(ims_a)
    train_b, test_b = pick(ims_b)
    x_train = train_a + train_b
    y_train = torch.cat([torch.zeros(len(train_a)), torch.ones(len(train_b))])
    x_test = test_a + test_b
    y_test = torch.cat([torch.zeros(len(test_a)), torch.ones(len(test_b))])

    # train on random crops
    model = TinyCritic(width)
    model.reset_parameters(gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size].tolist()
            xb = _random_crops([x_train[j] for j in idx], size, gen)  # (B, 3, s, s)
            loss = loss_fn(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    # held-out accuracy, mean logit over five crops per image
    model.eval()
    with torch.no_grad():
        logits = torch.stack([model(_grid_crops(im, size)).mean() for im in x_test])
    correct = int(((logits > 0).float() == y_test).sum())
    total = len(y_test)
    lo, hi = wilson_interval(correct, total, confidence=confidence)
    p_value = float(stats.binomtest(correct, total, 0.5, alternative="greater").pvalue)
    return TwoSampleResult(accuracy=correct / total, ci_low=lo, ci_high=hi, n_test=total,
                           p_value=p_value, n_train=len(x_train))
