"""The synthetic ("naive") degradation model, batched and reproducible.

    y = [ JPEG_q( (x * k_sigma) resized by 1/r + n_delta ) ] resized back to the input size

(GFPGAN, Wang et al. CVPR 2021, eq. 8; CodeFormer and DifFace use the same model with wider
ranges), optionally with a camera RAW stage (``raw.py``) before the resize and colour changes
of the LQ image after it. Stages run in the fixed order
    blur -> raw -> downsample -> noise -> JPEG -> upsample -> colour -> 8-bit rounding.

Reproducibility. Every image has its own integer seed. From it, ``sample_params`` derives one
sub-seed per stage (always in the order of ``STAGES``) and each stage draws its values from its
own generator, so an image's degradation depends only on its seed and the config: not on the
batch size, not on its position or neighbours, and disabling one stage does not change what the
others draw. The params hold every drawn value (and the seeds of the noise fields), so
``apply_params`` re-makes exactly the same LQ. ``degrade`` draws the per-image seeds from a
``torch.Generator`` one after another (image i depends on the generator state and on i only);
``degrade_images`` uses ``seed + start + i``, which is what folder runs use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flipnet.degradations.color import ColorConfig, apply_color, sample_color_params
from flipnet.degradations.jpeg import JpegConfig, apply_jpeg, sample_jpeg_params
from flipnet.degradations.kernels import BlurConfig, apply_blur, sample_blur_params
from flipnet.degradations.noise import (
    NoiseConfig,
    apply_noise,
    draw_seed,
    make_generator,
    sample_noise_params,
)
from flipnet.degradations.raw import RawConfig, apply_raw, sample_raw_params
from flipnet.degradations.resize import (
    ResizeConfig,
    apply_downsample,
    apply_upsample,
    sample_resize_params,
)

STAGES = ("blur", "raw", "resize", "noise", "jpeg", "color")
_SAMPLERS = {"blur": sample_blur_params, "raw": sample_raw_params,
             "resize": sample_resize_params, "noise": sample_noise_params,
             "jpeg": sample_jpeg_params, "color": sample_color_params}


@dataclass(frozen=True)
class DegradationConfig:
    """One setting per stage (None = stage off); stages always run in the order of ``STAGES``."""

    name: str = "custom"
    blur: BlurConfig | None = None
    raw: RawConfig | None = None
    resize: ResizeConfig | None = None
    noise: NoiseConfig | None = None
    jpeg: JpegConfig | None = None
    color: ColorConfig | None = None
    quantize: bool = True  # round the LQ to 8-bit levels, like the datasets that save it


def sample_params(cfg: DegradationConfig, seed: int) -> dict:
    """All random values of one image's degradation, as a JSON-ready dict, from its seed."""
    g = make_generator(seed)
    stage_seeds = {stage: draw_seed(g) for stage in STAGES}  # fixed order, always all drawn
    params: dict = {"seed": int(seed)}
    for stage in STAGES:
        stage_cfg = getattr(cfg, stage)
        sampler = _SAMPLERS[stage]
        params[stage] = (None if stage_cfg is None
                         else sampler(stage_cfg, make_generator(stage_seeds[stage])))
    params["quantize"] = cfg.quantize
    return params


def _check_batch(x: torch.Tensor, n_params: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a float tensor (N, 3, H, W) in [-1, 1], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float tensor in [-1, 1] (see flipnet.io.to_tensor), "
                         f"got {x.dtype}")
    if n_params is not None and n_params != x.shape[0]:
        raise ValueError(f"got {n_params} params for a batch of {x.shape[0]} images")


@torch.no_grad()
def apply_params(x: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
    """Degrade x (N,3,H,W) in [-1,1] with the given per-image params; same shape, float32."""
    _check_batch(x, len(params))
    x = x.float().clamp(-1.0, 1.0)
    h, w = x.shape[-2:]
    # batched stages (same size for every image)
    x = apply_blur(x, [p["blur"] for p in params])
    x = apply_raw(x, [p["raw"] for p in params])
    # per-image stages (sizes differ after the downsample)
    out = []
    for xi, p in zip(x.split(1), params):  # xi (1,3,H,W)
        yi = apply_downsample(xi, p["resize"])
        yi = apply_noise(yi, p["noise"])
        yi = apply_jpeg(yi, p["jpeg"])
        yi = apply_upsample(yi, (h, w), p["resize"])
        yi = apply_color(yi, p["color"])
        if p.get("quantize", True):
            yi = ((yi.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0
        out.append(yi)
    return torch.cat(out).clamp(-1.0, 1.0)


def degrade_seeded(x: torch.Tensor, cfg: DegradationConfig,
                   seeds: Sequence[int]) -> tuple[torch.Tensor, list[dict]]:
    """Degrade image i of x (N,3,H,W) with ``seeds[i]``; returns (lq, params)."""
    _check_batch(x, len(seeds))
    params = [sample_params(cfg, s) for s in seeds]
    return apply_params(x, params), params


def degrade(x: torch.Tensor, cfg: DegradationConfig, *,
            generator: torch.Generator) -> tuple[torch.Tensor, list[dict]]:
    """Degrade a batch x (N,3,H,W) in [-1,1]; per-image seeds are drawn from ``generator``."""
    _check_batch(x)
    seeds = [draw_seed(generator) for _ in range(x.shape[0])]
    return degrade_seeded(x, cfg, seeds)


def degrade_images(x: torch.Tensor, cfg: DegradationConfig, *, seed: int,
                   start: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Degrade x (N,3,H,W) with per-image seeds ``seed + start + i`` (batch-size independent)."""
    _check_batch(x)
    return degrade_seeded(x, cfg, [seed + start + i for i in range(x.shape[0])])
