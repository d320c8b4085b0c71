"""DifFace-style restoration with the unconditional prior alone: a FaceMethod.

Each batch of crops is diffused to an intermediate step and sampled back with low-pass guidance
toward the input (``flipnet.diffusion.guided_resample``); ``fidelity`` sets how far. A latent
prior does the same on latents: the input, resized to the prior's pixel size, is encoded, guided
in latent space (``prior_resample``) and decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flipnet.device import resolve_device
from flipnet.diffusion.guidance import latent_factor, make_lowpass_edit, scaled_factor
from flipnet.diffusion.guided_resample import GuidedResampleConfig, guided_resample
from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import randn_like, sample_ddpm
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError
from flipnet.io import to_tensor, to_uint8
from flipnet.models.prior import load_prior
from flipnet.models.prior_types import Prior


@torch.no_grad()
def prior_resample(prior: Prior, y: torch.Tensor, cfg: GuidedResampleConfig, *,
                   first_index: int = 0, indices: list[int] | None = None) -> torch.Tensor:
    """``guided_resample`` for any prior: y (N, 3, H, W) in [-1, 1] -> (N, 3, H, W).

    Pixel priors: ``guided_resample`` itself. Latent priors: y resized to the prior's pixel size
    and encoded, diffused to t0 and sampled back (no x0 clipping) with low-pass guidance toward
    its latents, the image factor N (``cfg.factor``, 0 = the paper's 16 at 512 px scaled) mapped
    to the latent factor round(N / f) (``diffusion.guidance.latent_factor``), then decoded and
    resized back as ``guided_resample`` does. Image k's noise comes from seed + indices[k].
    """
    if prior.autoencoder is None:
        return guided_resample(prior, y, cfg, first_index=first_index, indices=indices)
    schedule = make_schedule(prior.schedule)
    size, (h, w) = prior.image_size, y.shape[-2:]
    ys = y if (h, w) == (size, size) else F.interpolate(
        y, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    indices = list(range(first_index, first_index + len(y))) if indices is None else indices
    gens = [torch.Generator().manual_seed(cfg.seed + i) for i in indices]
    ts = sampling_timesteps(schedule.num_timesteps, str(cfg.respaced_steps), start_index=cfg.t0)
    k = latent_factor(cfg.factor or scaled_factor(16, 512, size), prior.factor)
    # the reference in latent space, diffused to t0; guided toward its latents' low band
    z_ref = prior.encode(ys)  # (N, C, size / f, size / f)
    zt = schedule.q_sample(z_ref, ts[0], randn_like(z_ref, gens))
    edit = make_lowpass_edit(z_ref, schedule, ts, factor=k, tau=cfg.tau, generator=gens)
    z0 = sample_ddpm(prior.model_fn, zt, schedule, ts, generator=gens, edit=edit,
                     clip_x0=prior.clip_x0)
    x0 = prior.decode(z0).clamp(-1, 1)  # (N, 3, size, size)
    if (h, w) != (size, size):
        up = F.interpolate(x0, size=(h, w), mode="bicubic", align_corners=False)
        if cfg.keep_reference_detail:  # y + up(x0 - down(y)): the prior edits its own band only
            up = y + F.interpolate(x0 - ys, size=(h, w), mode="bicubic", align_corners=False)
        x0 = up
    return x0.clamp(-1, 1)


class PriorMethod:
    """DifFace-style restoration with the prior alone (no trained restorer): a FaceMethod;
    pixel and latent priors alike (``prior_resample``)."""

    name = "prior"
    template = "flipnet"

    def __init__(self, folder: Path, *, device: str = "cpu", batch_size: int = 16,
                 fidelity: float = 0.5, steps: int = 50, seed: int = 0):
        self.device = resolve_device(device)
        self.prior = load_prior(folder, self.device)
        self.prior.model.eval()
        self.size = 128
        self.batch_size = batch_size
        if not 0.0 <= fidelity <= 1.0:
            raise ConfigError(f"fidelity must be in [0, 1], got {fidelity}")
        steps = max(10, int(steps))
        # fidelity 0.5 -> t0 = 0.6 of the schedule (the paper's 150 of 250); tau = 0.36 (90/250)
        t0 = max(1, min(steps - 1, round(steps * (0.8 - 0.4 * fidelity))))
        self.cfg = GuidedResampleConfig(respaced_steps=steps, t0=t0,
                                        tau=min(t0, round(steps * 0.36)), seed=seed)

    @torch.no_grad()
    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored crops of the same size."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            y = to_tensor(np.asarray(crops[i:i + self.batch_size])).to(self.device)
            out.append(to_uint8(prior_resample(self.prior, y, self.cfg, first_index=i)))
        return np.concatenate(out)
