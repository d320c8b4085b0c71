"""Gaussian blur kernels (isotropic and anisotropic) and batched per-image blurring.

Follows BasicSR's ``random_mixed_kernels`` as used by GFPGAN (options/train_gfpgan_v1.yml),
CodeFormer (options/CodeFormer_stage2.yml) and DifFace (configs/training/swinir_ffhq512.yaml):
kernel size 41, ``kernel_list ['iso', 'aniso']`` with probabilities ``[0.5, 0.5]``, the same
``blur_sigma`` range for sigma_x and sigma_y, rotation uniform in [-pi, pi] (anisotropic only).
The kernel is ``exp(-0.5 p^T S^-1 p)`` normalised to sum 1, with the covariance
``S = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``; x runs along columns, y along rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flipnet.degradations.noise import (
    check_choices,
    check_prob,
    check_range,
    draw_bernoulli,
    draw_choice,
    draw_uniform,
)
from flipnet.errors import ConfigError

KERNEL_TYPES = ("iso", "aniso")


@dataclass(frozen=True)
class BlurConfig:
    """Gaussian blur: kernel type drawn from ``kernel_types``; sigma in pixels."""

    kernel_size: int = 41
    kernel_types: tuple[str, ...] = ("iso", "aniso")
    kernel_probs: tuple[float, ...] = (0.5, 0.5)
    sigma: tuple[float, float] = (0.1, 10.0)
    prob: float = 1.0

    def __post_init__(self):
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"blur.kernel_size must be a positive odd number, "
                              f"got {self.kernel_size}")
        check_choices("blur.kernel_types", self.kernel_types, self.kernel_probs, KERNEL_TYPES)
        check_range("blur.sigma", self.sigma, low=1e-3)
        check_prob("blur.prob", self.prob)


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float, size: int) -> torch.Tensor:
    """A (size, size) float32 Gaussian kernel, rotated by ``theta`` radians, summing to 1."""
    ax = torch.arange(size, dtype=torch.float64) - (size // 2)  # (k,), centred
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")  # (k,k) rows = y, cols = x
    c, s = math.cos(theta), math.sin(theta)
    # rotate coordinates into the kernel's principal axes: p' = R^T p
    u = c * xx + s * yy
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))  # (k,k)
    return (k / k.sum()).float()


def sample_blur_params(cfg: BlurConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's blur kernel settings, or None if the stage is skipped."""
    apply = draw_bernoulli(generator, cfg.prob)
    kind = draw_choice(generator, cfg.kernel_types, cfg.kernel_probs)
    sigma_x = draw_uniform(generator, *cfg.sigma)
    sigma_y = draw_uniform(generator, *cfg.sigma)
    theta = draw_uniform(generator, -math.pi, math.pi)
    if not apply:
        return None
    if kind == "iso":  # BasicSR: isotropic kernels use sigma_x for both axes and no rotation
        sigma_y, theta = sigma_x, 0.0
    return {"kernel": kind, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta,
            "kernel_size": cfg.kernel_size}


def kernel_from_params(params: dict) -> torch.Tensor:
    """The (k, k) kernel described by blur params."""
    return gaussian_kernel(params["sigma_x"], params["sigma_y"], params["theta"],
                           int(params["kernel_size"]))


def _pad_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an odd (k,k) kernel to (size,size), keeping it centred."""
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p)) if p else k


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur x (N,C,H,W) with one kernel per image (N,k,k): grouped conv2d, reflect padding.

    Reflect padding needs the image to be larger than half the kernel; smaller images fall
    back to replicate padding.
    """
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)  # (1,N*C,H+2p,W+2p)
    weight = kernels.to(x).repeat_interleave(c, dim=0)[:, None]  # (N*C,1,k,k)
    # conv2d is a correlation; Gaussian kernels are point-symmetric, so this is a convolution
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def apply_blur(x: torch.Tensor, params: Sequence[dict | None]) -> torch.Tensor:
    """Blur each image of x (N,3,H,W) by its params (None = not blurred)."""
    idx = [i for i, p in enumerate(params) if p is not None]
    if not idx:
        return x
    kernels = [kernel_from_params(params[i]) for i in idx]
    size = max(k.shape[-1] for k in kernels)
    stack = torch.stack([_pad_kernel(k, size) for k in kernels])  # (M,k,k)
    out = x.clone()
    out[idx] = blur(x[idx], stack)
    return out
