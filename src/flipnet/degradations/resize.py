"""Down-sampling by a random factor and resizing back to the input size.

GFPGAN / CodeFormer / DifFace shrink to ``int(w // scale)`` x ``int(h // scale)`` with bilinear
interpolation (cv2 INTER_LINEAR), add noise and JPEG at that size, then resize back to the input
size bilinearly. A scale below 1 (GFPGAN's range starts at 0.8) enlarges instead. Here resizing
is ``torch.nn.functional.interpolate`` with ``antialias=True`` when shrinking (bilinear and
bicubic; "area" averages by itself).
"""

from __future__ import annotations

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

DOWN_MODES = ("bilinear", "bicubic", "area", "nearest")
UP_MODES = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class ResizeConfig:
    """Resize by 1/scale (scale > 1 shrinks) with a drawn mode, then back with ``up_mode``."""

    scale: tuple[float, float] = (0.8, 8.0)
    down_modes: tuple[str, ...] = ("bilinear",)
    down_probs: tuple[float, ...] = (1.0,)
    up_mode: str = "bilinear"
    prob: float = 1.0
    min_scale: float = 0.0  # each drawn factor is raised to at least this (1 = never enlarge)

    def __post_init__(self):
        check_range("resize.scale", self.scale, low=1e-3)
        check_choices("resize.down_modes", self.down_modes, self.down_probs, DOWN_MODES)
        if self.up_mode not in UP_MODES:
            raise ConfigError(f"resize.up_mode: {self.up_mode!r} is not one of "
                              f"{', '.join(UP_MODES)}")
        check_prob("resize.prob", self.prob)


def sample_resize_params(cfg: ResizeConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's scale and interpolation mode, or None if the stage is skipped."""
    apply = draw_bernoulli(generator, cfg.prob)
    scale = draw_uniform(generator, *cfg.scale)
    mode = draw_choice(generator, cfg.down_modes, cfg.down_probs)
    if not apply:
        return None
    return {"scale": max(scale, cfg.min_scale), "down_mode": mode, "up_mode": cfg.up_mode}


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """The (h, w) after dividing by ``scale`` as GFPGAN does (``int(w // scale)``), at least 1."""
    return max(1, int(h // scale)), max(1, int(w // scale))


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize x (N,C,H,W) to ``size`` = (h, w); antialiased when shrinking; clipped to [-1,1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode in ("bilinear", "bicubic"):
        shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        out = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)
    else:
        out = F.interpolate(x, size=size, mode=mode)
    return out.clamp(-1.0, 1.0)


def apply_downsample(x: torch.Tensor, params: dict | None) -> torch.Tensor:
    """Shrink x (1,3,H,W) by ``params['scale']`` (identity when params is None)."""
    if params is None:
        return x
    return resize(x, scaled_size(x.shape[-2], x.shape[-1], params["scale"]), params["down_mode"])


def apply_upsample(x: torch.Tensor, size: tuple[int, int], params: dict | None) -> torch.Tensor:
    """Resize x back to ``size`` = (H, W) with ``params['up_mode']``."""
    if params is None:
        return x
    return resize(x, size, params["up_mode"])
