"""Diffuse-and-guide with an unconditional prior (DifFace, Yue & Loy, TPAMI 2024; the pseudo
targets of Kuai et al., WACV 2025, Sec. 3.2).

Given a starting image y (the LQ face, or a restorer's output), diffuse it to respaced step t0
(paper: 150 of 250), then run the reverse process with low-pass replacement toward y until
``tau`` steps remain (paper: 90), then free. A higher t0 gives the prior more say. ``prior`` is a
``flipnet.models.prior_types.Prior`` (duck-typed: ``schedule``, ``image_size``, ``model_fn``).
Used by ``pipelines.prior_restore`` (DifFace-style restoration) and ``pipelines.pseudo_targets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from flipnet.diffusion.guidance import latent_factor, make_lowpass_edit, scaled_factor
from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import randn_like, sample_ddpm
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError


@dataclass(frozen=True)
class GuidedResampleConfig:
    """Settings of diffuse-and-guide; defaults follow the paper (scaled to the prior's size)."""

    respaced_steps: int = field(default=250, metadata={"help": "Respaced reverse steps."})
    t0: int = field(default=150, metadata={"help": "Respaced step the input is diffused to."})
    tau: int = field(default=90, metadata={"help": "Guidance stops when this many steps remain."})
    factor: int = field(default=0, metadata={
        "help": "Low-pass down/up factor; 0 = the paper's 16 at 512 px scaled to the prior size."})
    seed: int = field(default=0, metadata={"help": "Seed; image i uses seed + i."})
    keep_reference_detail: bool = field(default=False, metadata={
        "help": "Let the prior edit only what it can represent and keep the reference's finer "
                "detail: the band above a smaller prior's size, and on a latent prior what its "
                "autoencoder loses (y - decode(encode(y)))."})

    def __post_init__(self):
        if not 0 < self.t0 < self.respaced_steps:
            raise ConfigError(f"t0 must be in 1..{self.respaced_steps - 1}, got {self.t0}")
        if not 0 <= self.tau <= self.t0:
            raise ConfigError(f"tau must be in 0..t0={self.t0}, got {self.tau}")


def guided_resample(prior, y: torch.Tensor, cfg: GuidedResampleConfig, *,
                    first_index: int = 0, indices: list[int] | None = None) -> torch.Tensor:
    """Diffuse y (N, 3, H, W) in [-1, 1] to t0 and sample back with low-pass guidance toward y.
    Works at the prior's resolution; y is resized to it and the result resized back (or, with
    ``keep_reference_detail``, only the prior's change is upsampled and added to y). Image k
    draws its noise from seed + indices[k] (default first_index + k), whatever the batch.
    A latent prior (``prior.encode``/``decode``, ``factor``, ``clip_x0``) samples the reference's
    latents with the latent factor round(N / f) and no x0 clipping, then decodes (with
    ``keep_reference_detail``: y plus the prior's edit of decode(encode(y)))."""
    schedule = make_schedule(prior.schedule)
    size = prior.image_size
    h, w = y.shape[-2:]
    ys = y if (h, w) == (size, size) else F.interpolate(
        y, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    indices = list(range(first_index, first_index + len(y))) if indices is None else indices
    gens = [torch.Generator().manual_seed(cfg.seed + i) for i in indices]
    ts = sampling_timesteps(schedule.num_timesteps, str(cfg.respaced_steps), start_index=cfg.t0)
    # a latent prior works on the reference's latents: its factor N (image px) becomes N / f
    factor = latent_factor(cfg.factor or scaled_factor(16, 512, size), prior.factor)
    z_ref = prior.encode(ys)  # identity for a pixel prior
    zt = schedule.q_sample(z_ref, ts[0], randn_like(z_ref, gens))
    edit = make_lowpass_edit(z_ref, schedule, ts, factor=factor, tau=cfg.tau, generator=gens)
    x0 = prior.decode(sample_ddpm(prior.model_fn, zt, schedule, ts, generator=gens, edit=edit,
                                  clip_x0=prior.clip_x0))  # (N, 3, size, size)
    if cfg.keep_reference_detail and getattr(prior, "autoencoder", None) is not None:
        # the prior's edit of the autoencoder's reconstruction, added to the reference: detail
        # the autoencoder cannot represent stays the reference's instead of being smoothed away
        x0 = ys + (x0 - prior.decode(z_ref))
    if (h, w) != (size, size):
        up = F.interpolate(x0, size=(h, w), mode="bicubic", align_corners=False)
        if cfg.keep_reference_detail:  # y + up(x0 - down(y)): the prior edits its own band only
            up = y + F.interpolate(x0 - ys, size=(h, w), mode="bicubic", align_corners=False)
        x0 = up
    return x0.clamp(-1, 1)
