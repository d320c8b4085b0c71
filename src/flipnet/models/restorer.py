"""The fast feed-forward face restorer: one forward pass, LQ face in, restored face out.

Architecture: a compact NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV
2022): a U-shaped net of NAF blocks (LayerNorm, 1x1 conv, 3x3 depth-wise conv, SimpleGate,
simplified channel attention, gated FFN; no non-linear activation functions) with additive skips.
Why NAFNet and not a plain UNet: at equal quality it has far fewer multiply-adds, because the
spatial mixing is depth-wise and the channel mixing is 1x1, which is what makes a one-thread CPU
pass over a 128 px face take milliseconds. One more CPU trick: the image is first folded by a
``PixelUnshuffle(unshuffle)`` (3 -> 12 channels at half resolution for 2), so no layer runs at
full resolution; the output is unfolded by ``PixelShuffle``. The net predicts a residual added to
the input, and its last conv starts at zero, so an untrained restorer is the identity.

Inputs of any size work: they are reflect-padded to a multiple of ``cfg.multiple()`` (16 for the
default 3 levels and unshuffle 2) and cropped back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.weights import load_into, load_state_dict, save_state_dict


@dataclass(frozen=True)
class RestorerConfig:
    """Architecture of the restorer; saved as ``config.json`` beside its weights."""

    image_size: int = 128  # face size it is trained on and meant for (any size runs)
    width: int = 16  # channels at the first level (doubled at each level below)
    enc_blocks: tuple[int, ...] = (1, 1, 2)  # NAF blocks per encoder level (one level each)
    middle_blocks: int = 2  # NAF blocks at the lowest resolution
    dec_blocks: tuple[int, ...] = (1, 1, 1)  # NAF blocks per decoder level, deepest first
    unshuffle: int = 2  # fold the input by this factor first (1 = off)
    dw_expand: int = 2  # channel expansion inside the depth-wise branch
    ffn_expand: int = 2  # channel expansion of the gated feed-forward branch

    def multiple(self) -> int:
        """Input sides are padded to a multiple of this (unshuffle * 2^levels)."""
        return self.unshuffle * 2 ** len(self.enc_blocks)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first inconsistent or out-of-range setting."""
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise ConfigError(f"RestorerConfig: enc_blocks {self.enc_blocks} and dec_blocks "
                              f"{self.dec_blocks} need the same number of levels")
        for name in ("image_size", "width", "unshuffle", "dw_expand", "ffn_expand"):
            _check_range(name, getattr(self, name), 1, RESTORER_LIMITS[name])
        _check_range("levels (len(enc_blocks))", len(self.enc_blocks), 0,
                     RESTORER_LIMITS["levels"])
        _check_range("middle_blocks", self.middle_blocks, 0, RESTORER_LIMITS["blocks"])
        for name in ("enc_blocks", "dec_blocks"):
            for n in getattr(self, name):
                _check_range(f"{name} entry", n, 0, RESTORER_LIMITS["blocks"])
        if (self.width * self.dw_expand) % 2 or (self.width * self.ffn_expand) % 2:
            raise ConfigError(f"RestorerConfig: width * dw_expand and width * ffn_expand must be "
                              f"even (SimpleGate halves them), got width={self.width}, "
                              f"dw_expand={self.dw_expand}, ffn_expand={self.ffn_expand}")
        deepest = self.width * 2 ** len(self.enc_blocks)
        if deepest > RESTORER_LIMITS["channels"]:
            raise ConfigError(f"RestorerConfig: width * 2^levels = {deepest} channels at the "
                              f"deepest level, over the limit of {RESTORER_LIMITS['channels']}")
        if self.parameter_estimate() > RESTORER_LIMITS["parameters"]:
            raise ConfigError(f"RestorerConfig: about {self.parameter_estimate():,} parameters, "
                              f"over the limit of {RESTORER_LIMITS['parameters']:,}")

    def parameter_estimate(self) -> int:
        """Parameter count from the settings alone (exact for this architecture; no allocation)."""
        e1, e2, folded = self.dw_expand, self.ffn_expand, 3 * self.unshuffle**2

        def block(c: int) -> int:
            dw = c * e1
            return (4 * c + (c * dw + dw) + (dw * 9 + dw) + (dw // 2) ** 2 + dw // 2
                    + (dw // 2 * c + c) + (c * c * e2 + c * e2) + (c * e2 // 2 * c + c) + 2 * c)

        c, total = self.width, (folded * 9 + 1) * self.width
        for n in self.enc_blocks:
            total += n * block(c) + (c * 2 * c * 4 + 2 * c)
            c *= 2
        total += self.middle_blocks * block(c)
        for n in self.dec_blocks:
            total += c * 2 * c
            c //= 2
            total += n * block(c)
        return total + (self.width * 9 + 1) * folded


# Upper bounds that keep a config file from hanging the loader or asking for absurd memory;
# public NAFNet models (width 32-64, 4 levels, up to 28 middle blocks) are far inside them.
RESTORER_LIMITS = {"image_size": 16384, "width": 1024, "unshuffle": 16, "dw_expand": 16,
                   "ffn_expand": 16, "levels": 8, "blocks": 256, "channels": 16384,
                   "parameters": 1_000_000_000}


def _check_range(name: str, value: int, low: int, high: int) -> None:
    """``ConfigError`` naming ``name`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"RestorerConfig.{name} = {value} is out of range ({low} to {high})")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    """SimpleGate (NAFNet eq. 3): split the channels in two halves and multiply them."""
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """NAFNet block (NAFNet fig. 3c): x + beta * SCA-branch(x), then + gamma * FFN-branch."""

    def __init__(self, c: int, *, dw_expand: int = 2, ffn_expand: int = 2):
        super().__init__()
        dw = c * dw_expand
        self.norm1 = LayerNorm2d(c)
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)  # depth-wise
        self.sca = nn.Conv2d(dw // 2, dw // 2, 1)  # simplified channel attention (eq. 4)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = nn.Conv2d(c, c * ffn_expand, 1)
        self.conv5 = nn.Conv2d(c * ffn_expand // 2, c, 1)
        # layer scales start at zero: every block is the identity at init
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = simple_gate(self.conv2(self.conv1(self.norm1(x))))  # (B, dw/2, H, W)
        h = h * self.sca(h.mean(dim=(2, 3), keepdim=True))
        x = x + self.beta * self.conv3(h)
        h = self.conv5(simple_gate(self.conv4(self.norm2(x))))
        return x + self.gamma * h


class Restorer(nn.Module):
    """Residual NAFNet restorer: ``forward(lq (B, 3, H, W) in [-1, 1]) -> (B, 3, H, W)``."""

    def __init__(self, cfg: RestorerConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        folded = 3 * cfg.unshuffle**2

        def blocks(c: int, n: int) -> nn.Sequential:
            return nn.Sequential(*(NAFBlock(c, dw_expand=cfg.dw_expand, ffn_expand=cfg.ffn_expand)
                                   for _ in range(n)))

        self.intro = nn.Conv2d(folded, cfg.width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        c = cfg.width
        for n in cfg.enc_blocks:
            self.encoders.append(blocks(c, n))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = blocks(c, cfg.middle_blocks)
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for n in cfg.dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(blocks(c, n))
        self.ending = nn.Conv2d(cfg.width, folded, 3, padding=1)
        nn.init.zeros_(self.ending.weight)  # residual starts at zero: output == input at init
        nn.init.zeros_(self.ending.bias)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """Restore a batch of faces; any H, W (padded internally to ``cfg.multiple()``)."""
        cfg = self.config
        h, w = lq.shape[-2:]
        m = cfg.multiple()
        pad_h, pad_w = (-h) % m, (-w) % m
        x = F.pad(lq, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else lq
        f = F.pixel_unshuffle(x, cfg.unshuffle) if cfg.unshuffle > 1 else x  # (B, 3u^2, H/u, W/u)
        f = self.intro(f)  # (B, width, H/u, W/u)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            f = encoder(f)
            skips.append(f)
            f = down(f)  # channels x2, resolution / 2
        f = self.middle(f)
        for up, decoder in zip(self.ups, self.decoders):
            f = decoder(up(f) + skips.pop())  # channels / 2, resolution x2
        r = self.ending(f)
        r = F.pixel_shuffle(r, cfg.unshuffle) if cfg.unshuffle > 1 else r  # (B, 3, H', W')
        return (x + r)[..., :h, :w]


def deepen_restorer(model: Restorer, cfg: RestorerConfig) -> Restorer:
    """A restorer of config ``cfg`` that computes exactly what ``model`` computes.

    ``cfg`` may only add NAF blocks (per level, in the middle); every other setting must match.
    The old blocks keep their weights and the new ones are appended after them: a new block's
    residual scales ``beta``/``gamma`` are zero, so it starts as the identity and training grows
    it from there (a warm start for a deeper net, instead of training it from zero).
    """
    old = model.config
    same = {k: getattr(old, k) for k in ("image_size", "width", "unshuffle", "dw_expand",
                                         "ffn_expand")}
    if same != {k: getattr(cfg, k) for k in same} or len(cfg.enc_blocks) != len(old.enc_blocks):
        raise ConfigError(f"deepen_restorer: only block counts may change, not {old} -> {cfg}")
    pairs = [*zip(cfg.enc_blocks, old.enc_blocks), (cfg.middle_blocks, old.middle_blocks),
             *zip(cfg.dec_blocks, old.dec_blocks)]
    if any(new < was for new, was in pairs):
        raise ConfigError(f"deepen_restorer: block counts may only grow ({old} -> {cfg})")
    grown = Restorer(cfg)
    state = grown.state_dict()
    for key, tensor in model.state_dict().items():
        state[key] = tensor  # Sequential indices of the old blocks are unchanged
    grown.load_state_dict(state, strict=True)
    return grown.train(model.training)


def interpolate_restorers(fidelity: Restorer, texture: Restorer, alpha: float) -> Restorer:
    """Network interpolation (ESRGAN): every weight is ``(1 - alpha) * fidelity + alpha *
    texture``, for two restorers of one architecture fine-tuned from the same start (a
    fidelity-oriented one and a GAN-heavier one). It trades PSNR for texture continuously,
    without artefacts that blending the two outputs would make."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"interpolate_restorers: alpha must be in [0, 1], got {alpha}")
    if fidelity.config != texture.config:
        raise ConfigError("interpolate_restorers: the two restorers' configs differ "
                          f"({fidelity.config} vs {texture.config})")
    a, b = fidelity.state_dict(), texture.state_dict()
    mixed = Restorer(fidelity.config)
    mixed.load_state_dict({k: (1 - alpha) * a[k] + alpha * b[k] for k in a}, strict=True)
    return mixed.train(fidelity.training)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


def save_restorer(folder: str | os.PathLike, model: Restorer, cfg: RestorerConfig) -> Path:
    """Write ``config.json`` + fp16 safetensors shards of a restorer; returns the folder."""
    folder = Path(folder)
    save_state_dict(folder, model.state_dict())
    save_config(cfg, folder / "config.json")
    return folder


def load_restorer(folder: str | os.PathLike, device: str | torch.device = "cpu"
                  ) -> tuple[Restorer, RestorerConfig]:
    """Rebuild a restorer from its folder (eval mode, float32); ``WeightsError`` on mismatch."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: restorer folder not found")
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a flipnet restorer folder)")
    try:
        cfg = load_config(RestorerConfig, folder / "config.json")
        model = Restorer(cfg)
    except ConfigError as e:
        raise WeightsError(f"{folder}: invalid restorer config ({e})") from None
    load_into(model, load_state_dict(folder), str(folder))
    return model.to(device).eval(), cfg
