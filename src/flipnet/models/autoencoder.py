"""A small convolutional face autoencoder (KL-regularised, as in LDM) for a latent diffusion prior.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR 2022), sec.
3.1: an encoder maps an image to a posterior N(mean, exp(logvar)) over a latent f times smaller
per side, a decoder maps the latent back; a tiny KL weight keeps the latent well scaled. Here the
prior works at 128 px: with ``block_out_channels`` of length L the factor is f = 2^(L-1), so the
default (32, 64, 64) gives f = 4 and a 128 px face becomes a (4, 32, 32) latent (f = 8 with four
entries: (4, 16, 16)).

Why conv-only: the blocks are the ResNet blocks of the LDM / diffusers ``AutoencoderKL`` (GroupNorm,
SiLU, 3x3 conv; stride-2 conv down, nearest-neighbour up + conv), but without the self-attention
of its middle block: at 32x32 latent pixels that attention is a 1024 x 1024 matrix per image, the
costliest layer on a CPU and of little use at f = 4 where every latent pixel sees a small patch.
It is written here rather than taken from diffusers because diffusers is an optional extra of
flipnet (and costs seconds to import); the layout is the same, so the speed is too.

Latents: ``encode`` returns the posterior mean normalised per channel, ``(mean - latent_shift) /
latent_scale``, where shift / scale are the training latents' channel mean / std written into the
config at export, so a diffusion prior sees roughly unit-variance latents; ``decode`` undoes it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.weights import load_into, load_state_dict, save_state_dict

# Upper bounds that keep a config file from hanging the loader or asking for absurd memory.
AUTOENCODER_LIMITS = {"image_size": 16384, "in_channels": 64, "latent_channels": 256,
                      "levels": 8, "channels": 4096, "layers_per_block": 64, "mid_blocks": 64}


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture and latent normalisation of the autoencoder; saved as ``config.json``."""

    image_size: int = 128  # face size it is trained on (any multiple of ``factor`` runs)
    in_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # one per level; f = 2^(levels - 1)
    layers_per_block: int = 1  # ResNet blocks per encoder level (decoder: one more)
    mid_blocks: int = 2  # ResNet blocks at the latent resolution, in encoder and decoder
    norm_num_groups: int = 16
    latent_shift: tuple[float, ...] | None = None  # per-channel mean of training latents
    latent_scale: tuple[float, ...] | None = None  # per-channel std of training latents
    # a decoder wider or deeper than the encoder (None: as the encoder): a decoder-only leg can
    # grow it while the frozen encoder keeps the latents, and the prior trained on them, valid
    decoder_channels: tuple[int, ...] | None = None  # per level, encoder order (finest first)
    decoder_layers_per_block: int | None = None  # decoder ResNet blocks per level, minus one

    @property
    def decoder_levels(self) -> tuple[int, ...]:
        """The decoder's channels per level, finest first (``decoder_channels`` or the
        encoder's)."""
        return tuple(self.decoder_channels or self.block_out_channels)

    @property
    def decoder_depth(self) -> int:
        """ResNet blocks per decoder level, minus one (as ``layers_per_block`` for the encoder)."""
        return (self.layers_per_block if self.decoder_layers_per_block is None
                else self.decoder_layers_per_block)

    def encoder_part(self) -> AutoencoderConfig:
        """This config without its decoder settings or latent statistics: equal for two
        autoencoders whose encoders (and so latents) are interchangeable."""
        return dataclasses.replace(self, decoder_channels=None, decoder_layers_per_block=None,
                                   latent_shift=None, latent_scale=None)

    @property
    def factor(self) -> int:
        """Image pixels per latent pixel along a side: 2^(levels - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Latent side for an ``image_size`` input."""
        return self.image_size // self.factor

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first inconsistent or out-of-range setting."""
        if not self.block_out_channels:
            raise ConfigError("AutoencoderConfig.block_out_channels is empty: give one channel "
                              "count per level, e.g. [32, 64, 64] for f = 4")
        _check_range("levels (len(block_out_channels))", len(self.block_out_channels), 1,
                     AUTOENCODER_LIMITS["levels"])
        for name in ("image_size", "in_channels", "latent_channels", "layers_per_block"):
            _check_range(name, getattr(self, name), 1, AUTOENCODER_LIMITS[name])
        _check_range("mid_blocks", self.mid_blocks, 0, AUTOENCODER_LIMITS["mid_blocks"])
        if len(self.decoder_levels) != len(self.block_out_channels):
            raise ConfigError(f"AutoencoderConfig.decoder_channels {list(self.decoder_levels)} "
                              f"needs one entry per encoder level "
                              f"({len(self.block_out_channels)})")
        _check_range("decoder_layers_per_block", self.decoder_depth, 1,
                     AUTOENCODER_LIMITS["layers_per_block"])
        for name, chans in (("block_out_channels", self.block_out_channels),
                            ("decoder_channels", self.decoder_levels)):
            for c in chans:
                _check_range(f"{name} entry", c, 1, AUTOENCODER_LIMITS["channels"])
                if self.norm_num_groups < 1 or c % self.norm_num_groups:
                    raise ConfigError(f"AutoencoderConfig: every {name} entry must be a "
                                      f"multiple of norm_num_groups = {self.norm_num_groups} "
                                      f"(GroupNorm), got {list(chans)}")
        if self.image_size % self.factor:
            raise ConfigError(f"AutoencoderConfig: image_size {self.image_size} is not a "
                              f"multiple of the factor f = {self.factor} "
                              f"(2^(len(block_out_channels) - 1))")
        for name in ("latent_shift", "latent_scale"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != self.latent_channels:
                raise ConfigError(f"AutoencoderConfig.{name} has {len(values)} entries, one per "
                                  f"latent channel is needed ({self.latent_channels})")
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"AutoencoderConfig.{name} = {list(values)} is not finite")
        if self.latent_scale is not None and min(self.latent_scale) <= 0:
            raise ConfigError(f"AutoencoderConfig.latent_scale = {list(self.latent_scale)} must "
                              "be positive (per-channel std of the training latents)")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    """``ConfigError`` naming ``name`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"AutoencoderConfig.{name} = {value} is out of range ({low} to {high})")


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3 twice plus a (1x1 when channels change) skip: (B, C_in, H, W) ->
    (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-6)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-6)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """Image (B, in, H, W) -> posterior moments (B, 2 * latent, H / f, W / f)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = chans[0]
        for i, c_out in enumerate(chans):
            for _ in range(cfg.layers_per_block):
                layers.append(ResnetBlock(c, c_out, g))
                c = c_out
            if i < len(chans) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # resolution / 2
        layers += [ResnetBlock(c, c, g) for _ in range(cfg.mid_blocks)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(x))  # (B, C_last, H / f, W / f)
        return self.conv_out(F.silu(self.norm_out(h)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (no checkerboard of a transposed conv)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    """Raw latent (B, latent, h, w) -> image (B, in, h * f, w * f), not clamped."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        chans, g = cfg.decoder_levels[::-1], cfg.norm_num_groups
        c = chans[0]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        layers: list[nn.Module] = [ResnetBlock(c, c, g) for _ in range(cfg.mid_blocks)]
        for i, c_out in enumerate(chans):
            for _ in range(cfg.decoder_depth + 1):
                layers.append(ResnetBlock(c, c_out, g))
                c = c_out
            if i < len(chans) - 1:
                layers.append(Upsample(c))  # resolution x 2
        self.blocks = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, c, eps=1e-6)
        self.conv_out = nn.Conv2d(c, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(z))  # (B, C_first, h * f, w * f)
        return self.conv_out(F.silu(self.norm_out(h)))


class FaceAutoencoder(nn.Module):
    """KL autoencoder: ``encode(x) -> z``, ``decode(z) -> x``, x in [-1, 1], z normalised."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        c = cfg.latent_channels
        shift = torch.tensor(cfg.latent_shift or (0.0,) * c).view(1, c, 1, 1)
        scale = torch.tensor(cfg.latent_scale or (1.0,) * c).view(1, c, 1, 1)
        # not in the state dict: the config holds them (filled at export)
        self.register_buffer("latent_shift", shift, persistent=False)
        self.register_buffer("latent_scale", scale, persistent=False)

    @property
    def factor(self) -> int:
        """Image pixels per latent pixel along a side."""
        return self.config.factor

    def _check_input(self, x: torch.Tensor) -> None:
        f = self.factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] % f or \
                x.shape[-2] % f:
            raise ValueError(f"FaceAutoencoder expects (B, {self.config.in_channels}, H, W) with "
                             f"H and W multiples of {f}, got {tuple(x.shape)}")

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw posterior (mean, logvar), each (B, latent, H / f, W / f); logvar in [-30, 20]."""
        self._check_input(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize(self, raw_z: torch.Tensor) -> torch.Tensor:
        """(raw - latent_shift) / latent_scale per channel (the identity without stats)."""
        return (raw_z - self.latent_shift) / self.latent_scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalize``: z * latent_scale + latent_shift."""
        return z * self.latent_scale + self.latent_shift

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent of x (B, in, H, W) in [-1, 1]: the normalised posterior mean,
        (B, latent, H / f, W / f)."""
        return self.normalize(self.encode_posterior(x)[0])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Image (B, in, h * f, w * f) in [-1, 1] (clamped) from a normalised latent."""
        return self.decoder(self.denormalize(z)).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, not clamped; mean; logvar). The decoded latent is the
        raw posterior mean plus ``noise`` (B, latent, H / f, W / f) * std when noise is given
        (the reparameterised sample of LDM), else the mean."""
        mean, logvar = self.encode_posterior(x)
        z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise
        return self.decoder(z), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent dims, per sample: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def same_encoder_weights(a: FaceAutoencoder, b: FaceAutoencoder, *, atol: float = 0.0) -> bool:
    """True when the two encoders hold the same tensors (within ``atol``): with the same latent
    statistics they make the same latents, so a prior or FLIPNET trained on one fits the other."""
    ours, theirs = a.encoder.state_dict(), b.encoder.state_dict()
    return ours.keys() == theirs.keys() and all(
        torch.allclose(ours[k].float(), theirs[k].float().to(ours[k].device), atol=atol)
        for k in ours)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


def save_autoencoder(folder: str | os.PathLike, model: FaceAutoencoder,
                     cfg: AutoencoderConfig) -> Path:
    """Write ``config.json`` + fp16 safetensors shards of an autoencoder; returns the folder."""
    folder = Path(folder)
    save_state_dict(folder, model.state_dict())
    save_config(cfg, folder / "config.json")
    return folder


def load_autoencoder(folder: str | os.PathLike, device: str | torch.device = "cpu"
                     ) -> tuple[FaceAutoencoder, AutoencoderConfig]:
    """Rebuild an autoencoder from its folder (eval mode, float32); ``WeightsError`` on
    mismatch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: autoencoder folder not found")
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a flipnet autoencoder folder)")
    try:
        cfg = load_config(AutoencoderConfig, folder / "config.json")
        model = FaceAutoencoder(cfg)
    except ConfigError as e:
        raise WeightsError(f"{folder}: invalid autoencoder config ({e})") from None
    load_into(model, load_state_dict(folder), str(folder))
    return model.to(device).eval(), cfg
