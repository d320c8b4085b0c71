"""Colour degradations of the LQ image: RGB shift, colour jitter, conversion to gray.

From GFPGAN's ``FFHQDegradationDataset`` (options/train_gfpgan_v1.yml): with ``color_jitter_prob``
0.3 each channel is shifted by U(-20, 20)/255; then with ``gray_prob`` 0.01 the image becomes
gray (BT.601 luma, as cv2.COLOR_BGR2GRAY); then with ``color_jitter_pt_prob`` 0.3 brightness
U(0.5, 1.5), contrast U(0.5, 1.5), saturation U(0, 1.5) and hue U(-0.1, 0.1) are applied in a
random order (torchvision semantics, except hue: a rotation of the YIQ chroma plane by
2*pi*hue instead of an HSV shift, to avoid the HSV round trip; close for small angles).
Works on [0, 1] internally; input and output are [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flipnet.degradations.noise import check_prob, check_range, draw_bernoulli, draw_uniform

JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.596, -0.274, -0.322],
                         [0.211, -0.523, 0.312]], dtype=torch.float64)


@dataclass(frozen=True)
class ColorConfig:
    """Probabilities and ranges of the LQ colour changes (all off by default)."""

    shift_prob: float = 0.0
    shift: float = 20.0  # on the 0-255 scale
    jitter_prob: float = 0.0
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.0, 1.5)
    hue: tuple[float, float] = (-0.1, 0.1)
    gray_prob: float = 0.0

    def __post_init__(self):
        for name in ("shift_prob", "jitter_prob", "gray_prob"):
            check_prob(f"color.{name}", getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            check_range(f"color.{name}", getattr(self, name), low=0.0)
        check_range("color.hue", self.hue, low=-0.5, high=0.5)


def sample_color_params(cfg: ColorConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's colour changes, or None when none of them happens."""
    do_shift = draw_bernoulli(generator, cfg.shift_prob)
    shift = [draw_uniform(generator, -cfg.shift, cfg.shift) for _ in range(3)]
    gray = draw_bernoulli(generator, cfg.gray_prob)
    do_jitter = draw_bernoulli(generator, cfg.jitter_prob)
    order = [JITTER_OPS[i] for i in torch.randperm(4, generator=generator).tolist()]
    factors = {op: draw_uniform(generator, *getattr(cfg, op)) for op in JITTER_OPS}
    if not (do_shift or gray or do_jitter):
        return None
    return {"shift": shift if do_shift else None, "gray": gray,
            "jitter": {"order": order, **factors} if do_jitter else None}


def to_gray(x01: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) in [0,1] -> BT.601 luma repeated over 3 channels."""
    y = _LUMA[0] * x01[:, 0:1] + _LUMA[1] * x01[:, 1:2] + _LUMA[2] * x01[:, 2:3]  # (N,1,H,W)
    return y.expand(-1, 3, -1, -1).contiguous()


def adjust_hue(x01: torch.Tensor, hue: float) -> torch.Tensor:
    """Rotate the chroma of (N,3,H,W) in [0,1] by 2*pi*hue in YIQ space."""
    a = 2.0 * math.pi * hue
    rot = torch.tensor([[1.0, 0.0, 0.0],
                        [0.0, math.cos(a), -math.sin(a)],
                        [0.0, math.sin(a), math.cos(a)]], dtype=torch.float64)
    m = (torch.linalg.inv(_RGB2YIQ) @ rot @ _RGB2YIQ).to(x01)  # (3,3) RGB -> RGB
    return torch.einsum("ij,njhw->nihw", m, x01).clamp(0.0, 1.0)


def adjust(x01: torch.Tensor, op: str, factor: float) -> torch.Tensor:
    """One torchvision-style colour adjustment of (N,3,H,W) in [0,1]."""
    if op == "brightness":
        return (x01 * factor).clamp(0.0, 1.0)
    if op == "contrast":
        mean = to_gray(x01)[:, :1].mean(dim=(-2, -1), keepdim=True)  # (N,1,1,1)
        return (factor * x01 + (1.0 - factor) * mean).clamp(0.0, 1.0)
    if op == "saturation":
        return (factor * x01 + (1.0 - factor) * to_gray(x01)).clamp(0.0, 1.0)
    return adjust_hue(x01, factor)


def apply_color(x: torch.Tensor, params: dict | None) -> torch.Tensor:
    """Apply the colour changes described by ``params`` to x (N,3,H,W) in [-1,1]."""
    if params is None:
        return x
    x01 = (x + 1.0) / 2.0
    if params["shift"] is not None:
        shift = torch.tensor(params["shift"], dtype=x.dtype, device=x.device) / 255.0
        x01 = (x01 + shift.view(1, 3, 1, 1)).clamp(0.0, 1.0)
    if params["gray"]:
        x01 = to_gray(x01)
    if params["jitter"] is not None:
        for op in params["jitter"]["order"]:
            x01 = adjust(x01, op, params["jitter"][op])
    return x01 * 2.0 - 1.0
