"""Draw unconditional faces from a prior (flipnet folder, pixel or latent; diffusers folder or
guided-diffusion file): noise of the prior's ``latent_shape``, a pure sampler, then ``decode``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flipnet.device import resolve_device
from flipnet.diffusion.respace import sampling_timesteps
from flipnet.diffusion.samplers import SAMPLERS
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError, OutputPathError
from flipnet.io import save_image, to_uint8
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
    shape, out = prior.latent_shape, []  # (C, h, w): pixels, or a latent prior's latents
    if device.type == "cpu":  # 1.3x faster convolutions on CPU (measured: 45 -> 34 ms/img-step)
        prior.model.to(memory_format=torch.channels_last)
    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress):
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + i)
                for i in range(start, min(n, start + batch_size))]
        x = torch.stack([torch.randn(shape, generator=g) for g in gens])
        x = x.to(device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        kwargs = {}
        if sampler == "ddim":
            kwargs = {"eta": eta, "generator": gens}
        elif sampler == "ddpm":
            kwargs = {"generator": gens}
        x = SAMPLERS[sampler](prior.model_fn, x, schedule, ts, clip_x0=prior.clip_x0, **kwargs)
        with torch.no_grad():
            out.append(to_uint8(prior.decode(x.contiguous())))  # (B, 3, H, W) -> uint8
    return np.concatenate(out)


def check_sample_folder(folder: str | os.PathLike, weights: str | os.PathLike) -> Path:
    """``OutputPathError`` unless ``folder`` is outside the ``weights`` folder (checked before
    sampling, so a long run does not fail at the end)."""
    try:
        folder, guarded = Path(folder), Path(weights).resolve()
        where = folder.resolve()
    except (OSError, ValueError) as e:  # a NUL byte, a loop of links
        raise OutputPathError(f"{folder}: not a usable folder ({e})") from None
    if where == guarded or guarded in where.parents:
        raise OutputPathError(f"{folder}: sample folder must not be the weights folder or "
                              "inside it")
    return folder


def save_samples(folder: str | os.PathLike, images: np.ndarray, *, first_index: int = 0,
                 weights: str | os.PathLike | None = None) -> list[Path]:
    """Write uint8 (n, H, W, 3) faces as ``folder/NNNNN.png`` (NNNNN = first_index + k; atomic
    writes); with ``weights``, refuses a folder that is the weights folder or inside it."""
    folder = Path(folder) if weights is None else check_sample_folder(folder, weights)
    return [save_image(folder / f"{first_index + k:05d}.png", im) for k, im in enumerate(images)]
