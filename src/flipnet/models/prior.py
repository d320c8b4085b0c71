"""The unconditional face prior: a denoiser plus the settings of the schedule it was trained on.

A flipnet prior folder is ``config.json`` (a ``PriorConfig``: UNet architecture + schedule
settings) + fp16 safetensors shards (see ``flipnet.weights``) + ``MODEL_CARD.md``. ``load_prior``
also opens a diffusers ``UNet2DModel`` folder and a guided-diffusion / improved-DDPM state dict
(.pt/.pth/.safetensors). The schedule itself is built by ``flipnet.diffusion.schedules.make_schedule
(prior.schedule)`` (models sit below diffusion, so this module holds only its settings).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from flipnet.config import config_from_dict, folder_config_class, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.models.unet import UNet, UNetConfig
from flipnet.weights import load_into, load_state_dict, save_state_dict


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
    config: PriorConfig | None = None  # None for foreign formats without a flipnet config
    kind: str = "flipnet"  # flipnet | diffusers | guided-diffusion
    image_size: int = 64
    source: str = ""

    def model_fn(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """Sampler-ready denoiser call (original integer timesteps)."""
        return self.model(x, t, **kwargs)


def save_prior(folder: str | os.PathLike, model: nn.Module, cfg: PriorConfig) -> Path:
    """Write config.json + fp16 safetensors shards for a flipnet ``UNet`` prior."""
    folder = Path(folder)
    state = {k: v for k, v in model.state_dict().items() if ".processor." not in k}
    save_state_dict(folder, state)
    save_config(cfg, folder / "config.json")
    return folder


def _is_flipnet_folder(folder: Path) -> bool:
    return folder_config_class(folder) == "PriorConfig"


def _load_flipnet(folder: Path, device) -> Prior:
    data = json.loads((folder / "config.json").read_text())
    data.pop("_class", None)
    cfg = config_from_dict(PriorConfig, data, str(folder / "config.json"))
    model = UNet(cfg.unet)
    load_into(model, load_state_dict(folder), str(folder))
    model.to(device).eval()
    return Prior(model, cfg.schedule, cfg, "flipnet", cfg.unet.image_size, str(folder))


def load_prior(path: str | os.PathLike, device: str | torch.device = "cpu", *,
               flags: dict | str | None = None) -> Prior:
    """Open a prior: flipnet folder, diffusers ``UNet2DModel`` folder, or guided-diffusion file.

    ``flags`` (guided-diffusion only): a dict of its architecture/diffusion flags, a JSON file of
    them, or a preset name from ``public_checkpoints.PRESETS``; default: ``<file>.json`` beside
    the checkpoint, else the preset whose tensors match.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: prior not found")
    if path.is_dir():
        if _is_flipnet_folder(path):
            return _load_flipnet(path, device)
        from flipnet.models import public_checkpoints as pc

        if pc.is_diffusers_folder(path):
            return pc.load_diffusers_prior(path, device=device)
        raise WeightsError(f"{path}: neither a flipnet prior folder (config.json with "
                           "PriorConfig) nor a diffusers UNet2DModel folder")
    if path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"):
        from flipnet.models import public_checkpoints as pc

        return pc.load_guided_diffusion(path, flags=flags, device=device)
    raise WeightsError(f"{path}: unknown prior format (expected a folder or .pt/.pth/.safetensors)")
