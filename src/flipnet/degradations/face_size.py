"""Small faces: degrade a face at the size it had in the photo, then bring it to the model size.

Users bring faces of 30-100 px inside a photo; the aligner enlarges such a crop to the model
size, so the model sees a blurry, noisy, JPEG-blocked face whose detail ended at the photo's
resolution. ``degrade_at_face_size`` renders that: the HQ face is shrunk to ``face_px``
(antialiased), degraded there with the preset scaled to ``face_px`` (``preset_for_size``), and
enlarged back bicubically. ``FaceSizeConfig`` says how often a training sample is rendered so
and over which sizes; the draw is a function of the sample's seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flipnet.degradations.noise import check_prob, draw_bernoulli, make_generator
from flipnet.degradations.pipeline import apply_params, sample_params
from flipnet.degradations.presets import preset_for_size
from flipnet.degradations.resize import resize
from flipnet.errors import ConfigError

_SIZE_SEED_SALT = 0x5A11_FACE  # the size draw uses its own generator: the degradation is unchanged


@dataclass(frozen=True)
class FaceSizeConfig:
    """With probability ``prob`` a sample's face is rendered at a size drawn from ``size``."""

    prob: float = 0.0
    size: tuple[int, int] = (16, 128)  # face side in the photo, px (log-uniform)

    def __post_init__(self):
        check_prob("face_size.prob", self.prob)
        if len(self.size) != 2 or not 4 <= self.size[0] <= self.size[1]:
            raise ConfigError(f"face_size.size: need (low, high) with 4 <= low <= high, "
                              f"got {self.size}")


def sample_face_size(cfg: FaceSizeConfig | None, seed: int, model_size: int) -> int | None:
    """The face size (px) of the sample with ``seed``, or None to degrade at ``model_size``."""
    if cfg is None or cfg.prob <= 0:
        return None
    g = make_generator(seed ^ _SIZE_SEED_SALT)
    small = draw_bernoulli(g, cfg.prob)
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    lo, hi = cfg.size
    px = round(lo * (hi / lo) ** u)
    return px if small and px < model_size else None


@torch.no_grad()
def degrade_at_face_size(hq: torch.Tensor, preset: str, face_px: int,
                         seed: int) -> tuple[torch.Tensor, dict]:
    """HQ (1, 3, S, S) in [-1, 1] -> (LQ (1, 3, S, S), params) as if the face had been
    ``face_px`` px in the photo; ``params`` are those of the preset at ``face_px``."""
    size = tuple(hq.shape[-2:])
    small = resize(hq.float(), (face_px, face_px), "bicubic")
    params = sample_params(preset_for_size(preset, face_px), seed)
    lq = apply_params(small, [params])
    lq = resize(lq, size, "bicubic")
    return ((lq + 1) * 127.5).round() / 127.5 - 1, {**params, "face_px": face_px}
