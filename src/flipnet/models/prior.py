"""The unconditional face prior: save a flipnet prior folder, open any prior with ``load_prior``.

A flipnet prior folder is ``config.json`` (a ``models.prior_types.PriorConfig``: UNet
architecture + schedule settings) + fp16 safetensors shards (see ``flipnet.weights``) +
``MODEL_CARD.md``; a latent prior's folder adds ``autoencoder/`` (a folder as
``models.autoencoder.save_autoencoder`` writes it), and its UNet works on that autoencoder's
latents (``unet.in_channels`` = ``latent_channels``; faces of ``unet.image_size x factor`` px).
``load_prior`` also opens a diffusers ``UNet2DModel`` folder and a guided-diffusion /
improved-DDPM state dict (.pt/.pth/.safetensors) through ``models.public_checkpoints``. The
schedule itself is built by ``flipnet.diffusion.schedules.make_schedule(prior.schedule)`` (models
sit below diffusion, so a prior holds only its settings).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from flipnet.config import config_from_dict, folder_config_class, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.models import public_checkpoints as pc
from flipnet.models.autoencoder import load_autoencoder, save_autoencoder
from flipnet.models.prior_types import Prior, PriorConfig
from flipnet.models.unet import UNet
from flipnet.weights import load_into, load_state_dict, save_state_dict

AUTOENCODER_DIR = "autoencoder"  # a latent prior folder's autoencoder sub-folder


def save_prior(folder: str | os.PathLike, model: nn.Module, cfg: PriorConfig, *,
               autoencoder: nn.Module | tuple[nn.Module, object] | None = None) -> Path:
    """Write config.json + fp16 safetensors shards for a flipnet ``UNet`` prior; with
    ``autoencoder`` (a ``FaceAutoencoder``, or ``(module, AutoencoderConfig)``) also
    ``autoencoder/``, making it a latent prior (without, a stale ``autoencoder/`` is removed)."""
    folder = Path(folder)
    ae, ae_cfg = (autoencoder if isinstance(autoencoder, tuple)
                  else (autoencoder, getattr(autoencoder, "config", None)))
    if ae is not None and cfg.unet.in_channels != ae_cfg.latent_channels:
        raise ConfigError(f"latent prior: unet.in_channels {cfg.unet.in_channels} != the "
                          f"autoencoder's latent_channels {ae_cfg.latent_channels}")
    state = {k: v for k, v in model.state_dict().items() if ".processor." not in k}
    save_state_dict(folder, state)
    save_config(cfg, folder / "config.json")
    if ae is not None:
        save_autoencoder(folder / AUTOENCODER_DIR, ae, ae_cfg)
    elif (folder / AUTOENCODER_DIR).is_dir():  # a pixel prior saved over a latent one
        shutil.rmtree(folder / AUTOENCODER_DIR)
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
    ae, size = None, cfg.unet.image_size
    if (folder / AUTOENCODER_DIR).is_dir():  # a latent prior
        ae, ae_cfg = load_autoencoder(folder / AUTOENCODER_DIR, device=device)
        ae.eval().requires_grad_(False)
        if cfg.unet.in_channels != ae_cfg.latent_channels:
            raise WeightsError(f"{folder}: unet.in_channels {cfg.unet.in_channels} != "
                               f"{AUTOENCODER_DIR}/ latent_channels {ae_cfg.latent_channels}")
        size = cfg.unet.image_size * ae_cfg.factor
    return Prior(model, cfg.schedule, cfg, "flipnet", size, str(folder), autoencoder=ae)


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
