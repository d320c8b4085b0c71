"""The unconditional face prior: save a flipnet prior folder, open any prior with ``load_prior``.

A flipnet prior folder is ``config.json`` (a ``models.prior_types.PriorConfig``: UNet
architecture + schedule settings) + fp16 safetensors shards (see ``flipnet.weights``) +
``MODEL_CARD.md``. ``load_prior`` also opens a diffusers ``UNet2DModel`` folder and a
guided-diffusion / improved-DDPM state dict (.pt/.pth/.safetensors) through
``models.public_checkpoints``. The schedule itself is built by
``flipnet.diffusion.schedules.make_schedule(prior.schedule)`` (models sit below diffusion, so a
prior holds only its settings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from flipnet.config import config_from_dict, folder_config_class, save_config
from flipnet.errors import WeightsError
from flipnet.models import public_checkpoints as pc
from flipnet.models.prior_types import Prior, PriorConfig
from flipnet.models.unet import UNet
from flipnet.weights import load_into, load_state_dict, save_state_dict


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
        if pc.is_diffusers_folder(path):
            return pc.load_diffusers_prior(path, device=device)
        raise WeightsError(f"{path}: neither a flipnet prior folder (config.json with "
                           "PriorConfig) nor a diffusers UNet2DModel folder")
    if path.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"):
        return pc.load_guided_diffusion(path, flags=flags, device=device)
    raise WeightsError(f"{path}: unknown prior format (expected a folder or .pt/.pth/.safetensors)")
