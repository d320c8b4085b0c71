"""Pixel-space UNet denoiser (improved DDPM / guided-diffusion ``UNetModel`` layout).

The UNet knows nothing about the noise schedule: ``forward(x, t, context=None)`` maps a noisy
image and its (original, integer-valued) timestep to whatever the schedule's parameterisation
asks for (eps or v). Module names follow guided-diffusion (``input_blocks``, ``middle_block``,
``output_blocks``, ResBlock ``in_layers``/``emb_layers``/``out_layers``), so its checkpoints map
onto this model key for key, except each attention ``qkv``/``proj_out`` which becomes
``attn1.to_q``/``to_k``/``to_v``/``to_out`` (see ``flipnet.models.public_checkpoints``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError
from flipnet.models.attention import Attention, AttentionBlock, AttnProcessorLike, GroupNorm32


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet; saved as JSON beside the weights so a folder rebuilds itself."""

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[float, ...] = (1, 2, 2, 2)
    num_res_blocks: int | tuple[int, ...] = 2  # one number, or one per level
    attention_resolutions: tuple[int, ...] = (16, 8)  # feature-map sizes in pixels
    num_heads: int = 4
    num_head_channels: int = -1  # > 0: fixed width per head (overrides num_heads)
    num_heads_upsample: int = -1  # heads in output blocks; -1 = num_heads (guided-diffusion)
    dropout: float = 0.0
    cross_attention_dim: int | None = None  # None: no cross-attention modules at all
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    conv_resample: bool = True
    norm_groups: int = 32

    def res_blocks(self) -> tuple[int, ...]:
        """Residual blocks per level."""
        n = self.num_res_blocks
        return tuple(n) if isinstance(n, (tuple, list)) else (int(n),) * len(self.channel_mult)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first inconsistent or out-of-range setting."""
        if not self.channel_mult:
            raise ConfigError("UNetConfig.channel_mult is empty")
        lim = UNET_LIMITS
        for name in ("image_size", "in_channels", "out_channels", "model_channels", "norm_groups"):
            _check_range(name, getattr(self, name), 1, lim[name])
        _check_range("levels (len(channel_mult))", len(self.channel_mult), 1, lim["levels"])
        if len(self.res_blocks()) != len(self.channel_mult):
            raise ConfigError("UNetConfig.num_res_blocks needs one entry per channel_mult level")
        for n in self.res_blocks():
            _check_range("num_res_blocks", n, 0, lim["res_blocks"])
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"UNetConfig.dropout = {self.dropout} is out of range (0 to < 1)")
        _check_range("num_heads", self.num_heads, 1, lim["heads"])
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(f"UNetConfig.image_size {self.image_size} is not divisible by "
                              f"2^{len(self.channel_mult) - 1} (one halving per extra level)")
        for m in self.channel_mult:
            ch = int(m * self.model_channels)
            _check_range("channels of a level (channel_mult * model_channels)", ch, 1,
                         lim["channels"])
            if ch % self.norm_groups:
                raise ConfigError(f"UNetConfig: {ch} channels not divisible by "
                                  f"norm_groups={self.norm_groups}")
        if self.cross_attention_dim is not None:
            _check_range("cross_attention_dim", self.cross_attention_dim, 1, lim["channels"])
        if self.parameter_estimate() > lim["parameters"]:
            raise ConfigError(f"UNetConfig: about {self.parameter_estimate():,} parameters, over "
                              f"the limit of {lim['parameters']:,}")

    def parameter_estimate(self) -> int:
        """Approximate parameter count (convolutions and projections) without allocating."""
        mc, emb = self.model_channels, 4 * self.model_channels
        blocks = self.res_blocks()

        def res(cin: int, cout: int) -> int:  # two 3x3 convs, FiLM linear, 1x1 skip
            return 9 * cin * cout + 9 * cout * cout + emb * 2 * cout + (cin * cout if cin != cout
                                                                         else 0)

        def attn(c: int) -> int:
            ctx = self.cross_attention_dim
            return 4 * c * c + (2 * c * c + 2 * c * ctx if ctx else 0)

        ch = int(self.channel_mult[0] * mc)
        total, skips, px = mc * emb + emb * emb + 9 * self.in_channels * ch, [ch], self.image_size
        for level, m in enumerate(self.channel_mult):
            for _ in range(blocks[level]):
                total += res(ch, int(m * mc)) + (attn(int(m * mc)) if px in
                                                  self.attention_resolutions else 0)
                ch = int(m * mc)
                skips.append(ch)
            if level != len(self.channel_mult) - 1:
                total, px = total + 9 * ch * ch, px // 2
                skips.append(ch)
        total += 2 * res(ch, ch) + attn(ch)
        for level, m in list(enumerate(self.channel_mult))[::-1]:
            for _ in range(blocks[level] + 1):
                total += res(ch + skips.pop(), int(m * mc))
                ch = int(m * mc)
                total += attn(ch) if px in self.attention_resolutions else 0
            if level:
                total, px = total + 9 * ch * ch, px * 2
        return total + 9 * ch * self.out_channels


# Upper bounds that keep a config file from hanging the loader or asking for absurd memory.
# The largest public pixel UNets (guided-diffusion 256/512 px: 256 base channels, up to 4x
# multipliers, ~550M parameters) are well inside them.
UNET_LIMITS = {"image_size": 4096, "in_channels": 64, "out_channels": 64, "model_channels": 2048,
               "norm_groups": 1024, "levels": 10, "res_blocks": 32, "heads": 1024,
               "channels": 8192, "parameters": 3_000_000_000}


def _check_range(name: str, value: int, low: int, high: int) -> None:
    """``ConfigError`` naming ``name`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"UNetConfig.{name} = {value} is out of range ({low} to {high})")


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; guided-diffusion's [cos, sin] order): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Upsample(nn.Module):
    """Nearest 2x upsampling, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """2x downsampling by a strided 3x3 conv (or average pooling)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2)."""
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block with timestep conditioning (FiLM scale-shift when enabled), optional up/down."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float,
                 use_scale_shift_norm: bool, norm_groups: int, up: bool = False,
                 down: bool = False):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(norm_groups, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm
                                 else out_channels))
        out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(out_conv.weight)
        nn.init.zeros_(out_conv.bias)
        self.out_layers = nn.Sequential(GroupNorm32(norm_groups, out_channels), nn.SiLU(),
                                        nn.Dropout(dropout), out_conv)
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), emb (B, E) -> (B, C_out, H', W')."""
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]  # (B, C', 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class EmbedSequential(nn.Sequential):
    """Sequential that hands ``emb`` to ResBlocks and ``context`` to attention blocks."""

    def forward(self, x, emb, context=None, attn_kwargs=None):
        """Apply each layer with the inputs it takes."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context, **(attn_kwargs or {}))
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """Pixel-space UNet denoiser: ``forward(x (B, C, H, W), t (B,)) -> (B, C_out, H, W)``."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        mc, emb_dim = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, ch_out, dropout=cfg.dropout, norm_groups=cfg.norm_groups,
                            use_scale_shift_norm=cfg.use_scale_shift_norm, **kw)

        def attn(ch, heads):
            if cfg.num_head_channels > 0:
                if ch % cfg.num_head_channels:
                    raise ConfigError(f"UNetConfig: {ch} channels not divisible by "
                                      f"num_head_channels={cfg.num_head_channels}")
                heads = ch // cfg.num_head_channels
            return AttentionBlock(ch, heads=heads, norm_groups=cfg.norm_groups,
                                  context_dim=cfg.cross_attention_dim)

        blocks = cfg.res_blocks()
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3,
                                                                     padding=1))])
        skip_chans, res_px = [ch], cfg.image_size
        # encoder: num_res_blocks per level, then halve the resolution
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(blocks[level]):
                layers = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = (res(ch, ch, down=True) if cfg.resblock_updown
                        else Downsample(ch, cfg.conv_resample))
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                res_px //= 2
        # bottleneck: ResBlock, attention, ResBlock
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))
        # decoder: num_res_blocks + 1 per level (one per skip), then double the resolution
        heads_up = cfg.num_heads_upsample if cfg.num_heads_upsample > 0 else cfg.num_heads
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(blocks[level] + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if res_px in cfg.attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == blocks[level]:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown
                                  else Upsample(ch, cfg.conv_resample))
                    res_px *= 2
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(cfg.norm_groups, ch), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | None = None,
                *, cross_attention_kwargs: dict | None = None,
                emb_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the schedule's target (eps or v) from x_t (B, C, H, W) and timesteps t (B,);
        ``emb_offset`` (B, 4 x model_channels) is added to the time embedding (FLIPNET's mode)."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if emb_offset is not None:
            emb = emb + emb_offset.to(emb.dtype)  # (B, E)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context, cross_attention_kwargs)
            skips.append(h)
        h = self.middle_block(h, emb, context, cross_attention_kwargs)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, cross_attention_kwargs)
        return self.out(h)

    @property
    def attn_processors(self) -> dict[str, AttnProcessorLike]:
        """Every attention module's processor, keyed ``<module path>.processor``."""
        return {f"{name}.processor": m.processor for name, m in self.named_modules()
                if isinstance(m, Attention)}

    def set_attn_processor(self, processor: AttnProcessorLike | dict[str, AttnProcessorLike]
                           ) -> None:
        """Install one processor everywhere, or a dict keyed like ``attn_processors``."""
        names = self.attn_processors
        if isinstance(processor, dict):
            unknown = sorted(set(processor) - set(names))
            if unknown:
                raise ConfigError(f"set_attn_processor: no attention module {unknown[0]}")
        for name, m in self.named_modules():
            if isinstance(m, Attention):
                key = f"{name}.processor"
                if not isinstance(processor, dict):
                    m.set_processor(processor)
                elif key in processor:
                    m.set_processor(processor[key])


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
