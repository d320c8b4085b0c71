"""The prior's data types, shared by every prior loader: ``ScheduleConfig`` (the noise schedule
a prior was trained with), ``PriorConfig`` (a flipnet prior folder's config.json) and ``Prior``
(a loaded denoiser, its schedule settings and, for a latent prior, its autoencoder).
``models.prior`` opens flipnet folders and ``models.public_checkpoints`` published checkpoints;
both build these, neither imports the other's loaders back (``prior.load_prior`` dispatches to
``public_checkpoints``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from flipnet.errors import ConfigError
from flipnet.models.unet import UNetConfig


@dataclass(frozen=True)
class ScheduleConfig:
    """Noise-schedule settings a prior was trained with (see ``flipnet.diffusion.schedules``)."""

    num_timesteps: int = 1000
    beta_schedule: str = "cosine"  # linear | cosine
    prediction: str = "v"  # eps | v | x0
    beta_start: float | None = None  # linear only; None = DDPM's 1e-4 scaled by 1000/N
    beta_end: float | None = None  # linear only; None = DDPM's 0.02 scaled by 1000/N

    def __post_init__(self):
        if self.beta_schedule not in ("linear", "cosine"):
            raise ConfigError(f"beta_schedule {self.beta_schedule!r} is not linear | cosine")
        if self.prediction not in ("eps", "v", "x0"):
            raise ConfigError(f"prediction {self.prediction!r} is not eps | v | x0")
        if self.num_timesteps < 2:
            raise ConfigError("num_timesteps must be at least 2")


@dataclass(frozen=True)
class PriorConfig:
    """A prior = UNet architecture + schedule settings; this is a prior folder's config.json."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


@dataclass
class Prior:
    """A loaded prior = an optional autoencoder + a denoiser + a schedule.

    ``model(x_t, t)`` returns the ``schedule.prediction`` target. A pixel prior denoises images
    (``autoencoder`` None; ``encode``/``decode`` are the identity); a latent prior denoises the
    normalized latents of ``autoencoder`` (a ``models.autoencoder.FaceAutoencoder``:
    ``encode(x) -> z``, ``decode(z) -> x``, ``config.factor`` image px per latent px). Sampling
    code draws noise of ``latent_shape``, samples, then ``decode``s.
    """

    model: nn.Module
    schedule: ScheduleConfig
    # architecture + schedule: flipnet folders and guided-diffusion checkpoints (derived from
    # their flags); None for diffusers folders (not our UNet)
    config: PriorConfig | None = None
    kind: str = "flipnet"  # flipnet | diffusers | guided-diffusion
    image_size: int = 64  # pixels of the faces it makes (latent priors: UNet size x factor)
    source: str = ""
    flags: dict | None = None  # guided-diffusion: the flags it was opened with (to reopen it)
    autoencoder: nn.Module | None = None  # latent priors only (a flipnet folder's autoencoder/)

    @property
    def factor(self) -> int:
        """Image pixels per denoiser pixel: the autoencoder's factor, 1 for a pixel prior."""
        return 1 if self.autoencoder is None else int(self.autoencoder.config.factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of what the denoiser works on: (3, H, W) for a pixel prior,
        (latent_channels, H / f, W / f) for a latent prior."""
        side = self.image_size // self.factor
        if self.autoencoder is not None:
            return int(self.autoencoder.config.latent_channels), side, side
        return int(getattr(getattr(self.model, "config", None), "in_channels", 3)), side, side

    @property
    def clip_x0(self) -> bool:
        """Whether samplers may clip predicted x0 to [-1, 1]: images yes, normalized latents no."""
        return self.autoencoder is None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] at ``image_size`` -> what the denoiser works on."""
        return x if self.autoencoder is None else self.autoencoder.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """What the denoiser makes (B, *latent_shape) -> images (B, 3, H, W) in [-1, 1]."""
        return z if self.autoencoder is None else self.autoencoder.decode(z)

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """Sampler-ready denoiser call (original integer timesteps)."""
        return self.model(x, t, **kwargs)
