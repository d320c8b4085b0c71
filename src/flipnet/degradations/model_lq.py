"""The LQ a model working below the crop size sees: degrade the crop, then shrink it.

FLIPNET (and its face embedder) run at the prior's size (64 px for ``weights/prior-64``), but
faces reach them as aligned crops of ``CROP_SIZE`` px: at inference a real or synthetic LQ crop
is shrunk to the model size by ``to_model_size``. Training must show the model the same thing,
so its synthetic LQ is made the same way: the preset (scaled to the crop size,
``presets.preset_for_size``) degrades the crop, and ``to_model_size`` shrinks the result. Noise
and JPEG blocks thus have the scale they have at inference (degrading at the model size would
make them twice as coarse relative to the face).

``model_lq`` is the one place that makes this LQ: the FLIPNET and embedder trainers call it, and
the sampler (``diffusion.flipnet_sampling``) shrinks its input with ``to_model_size``, so an LQ
crop from ``flipnet bench`` (``pipelines.bench``: the same preset, seed and crop size, stored as
8-bit PNG) reaches the network exactly as ``model_lq`` made it (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flipnet.degradations.pipeline import DegradationConfig, degrade_seeded
from flipnet.degradations.presets import preset_for_size

CROP_SIZE = 128  # aligned face crops (the flipnet template): what FLIPNET restores


def to_model_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3, size, size): antialiased bicubic, clamped; unchanged
    when already that size. The one resize between crops and the model, both ways."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def model_lq(hq: torch.Tensor, preset: str | DegradationConfig, *, model_size: int,
             seed: int | Sequence[int]) -> tuple[torch.Tensor, list[dict]]:
    """HQ crops (N, 3, S, S) in [-1, 1] -> (LQ (N, 3, model_size, model_size), params).

    Args:
        hq: the crops at their own size S (``CROP_SIZE`` at inference).
        preset: a preset name, scaled to S px faces (``preset_for_size``), or a config used as
            given (already meant for S px faces).
        model_size: the size the model works at (the prior's image size).
        seed: image i's seed is ``seed + i`` (as ``degrade_images`` and ``flipnet bench``), or a
            list of per-image seeds.

    Returns:
        The LQ degraded at S and shrunk by ``to_model_size``, and each image's drawn params.
    """
    cfg = preset_for_size(preset, hq.shape[-1]) if isinstance(preset, str) else preset
    seeds = (list(seed) if isinstance(seed, Sequence)
             else [int(seed) + i for i in range(hq.shape[0])])
    lq, params = degrade_seeded(hq, cfg, seeds)  # at the crop size, 8-bit levels
    return to_model_size(lq, model_size), params
