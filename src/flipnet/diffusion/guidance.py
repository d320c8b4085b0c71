"""Low-pass (ILVR-style) replacement, the guidance of the unsupervised fine-tuning paper.

After each guided reverse step the low frequencies of x are swapped for those of the reference
diffused to the same step (Choi et al. 2021, ILVR eq. 8; Kuai et al. 2025, Sec. 3.2):

    x <- x - up(down(x)) + up(down(q_sample(ref, t_next)))

with a down/up factor N. Guidance stops once ``tau`` respaced steps remain; the rest is free.

Latent priors: the same replacement runs on latents, with ``ref`` the reference's latents
(the pipeline encodes it; these functions only see tensors). A latent pixel covers f x f image
pixels (f = the autoencoder's factor), so a latent down/up factor k corresponds to an image
factor k x f; ``latent_factor`` maps an image-space N to k = max(1, round(N / f)). For a
patch-wise linear autoencoder (pixel unshuffle) the latent low band is the image's low band at
k x f up to the filters' shape; for a learned (nonlinear) one the correspondence is approximate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from flipnet.diffusion.samplers import EditFn, Generator, randn_like
from flipnet.diffusion.schedules import NoiseSchedule


def lowpass(x: torch.Tensor, factor: int) -> torch.Tensor:
    """up(down(x)): bicubic anti-aliased down-sampling by ``factor`` and bicubic back up."""
    if factor <= 1:
        return x
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // factor), max(1, w // factor)), mode="bicubic",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)


def make_lowpass_edit(ref: torch.Tensor, schedule: NoiseSchedule, timesteps: Sequence[int], *,
                      factor: int, tau: int, generator: Generator | None = None) -> EditFn:
    """An ``edit`` hook for the samplers: low-pass replacement toward ``ref`` (x0, [-1, 1]) while
    more than ``tau`` of ``timesteps`` remain after the step."""
    ts = list(timesteps)

    def edit(x: torch.Tensor, i: int, t_next: int) -> torch.Tensor:
        remaining = len(ts) - (i + 1)  # steps still to run after this one
        if t_next < 0 or remaining <= tau:
            return x
        ref_t = schedule.q_sample(ref, t_next, randn_like(ref, generator))
        return x - lowpass(x, factor) + lowpass(ref_t, factor)

    return edit


def scaled_factor(paper_factor: int, paper_size: int, size: int) -> int:
    """The paper's down/up factor (16 at 512 px) scaled to another resolution, at least 1."""
    return max(1, round(paper_factor * size / paper_size))


def latent_factor(image_factor: int, factor: int) -> int:
    """Latent down/up factor k for an image-space factor N in a latent space ``factor`` (f) times
    smaller: k = max(1, round(N / f)); latent factor k corresponds to image factor k x f."""
    if factor < 1:
        raise ValueError(f"autoencoder factor must be at least 1, got {factor}")
    return max(1, round(image_factor / factor))
