"""The prior's data types, shared by every prior loader: ``ScheduleConfig`` (the noise schedule
a prior was trained with), ``PriorConfig`` (a flipnet prior folder's config.json) and ``Prior``
(a loaded denoiser plus its schedule settings). ``models.prior`` opens flipnet folders and
``models.public_checkpoints`` published checkpoints; both build these, neither imports the other's
loaders back (``prior.load_prior`` dispatches to ``public_checkpoints``).
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
    """A loaded prior: ``model(x_t, t)`` returns the ``schedule.prediction`` target."""

    model: nn.Module
    schedule: ScheduleConfig
    # architecture + schedule: flipnet folders and guided-diffusion checkpoints (derived from
    # their flags); None for diffusers folders (not our UNet)
    config: PriorConfig | None = None
    kind: str = "flipnet"  # flipnet | diffusers | guided-diffusion
    image_size: int = 64
    source: str = ""
    flags: dict | None = None  # guided-diffusion: the flags it was opened with (to reopen it)

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """Sampler-ready denoiser call (original integer timesteps)."""
        return self.model(x, t, **kwargs)
