"""BoostHub: FLIPNET's parallel attention branch that lets the target stream read the condition
stream (Miao et al., ICCV 2025, arXiv 2508.08556, Sec. 3 "BoostHub"; our reading).

FLIPNET runs two noisy images through one frozen UNet, stacked on the batch axis as
``[target; condition]`` (2B, T, C). At every self-attention (``attn1``) this processor gives

* the condition half plain self-attention (exactly the frozen prior's computation);
* the target half self-attention + ``phi`` x BoostHub, where BoostHub is attention with its own
  query from the target tokens and its own key/value from the condition tokens at the same
  position in the batch, through its own zero-initialised output projection.

A fresh BoostHub, or ``phi = 0``, therefore reproduces the frozen prior exactly (adapters start
as the identity, as diffusers' IP-Adapter and ControlNet do). ``phi`` (the fidelity knob) is
given per call through the attention kwargs (``UNet(..., cross_attention_kwargs={"phi": phi})``),
so concurrent callers with different values never touch shared state; the processor's own
``phi`` (the trained weight) is the default when a call gives none. Which stream is the target
is decided by the caller's stacking order: restoration mode puts the HQ stream first,
degradation mode the LQ stream.

On ``prior-64`` attention exists only at 16 and 8 px, so BoostHub alone sees the condition at
16x16 or coarser. ``install_injections`` adds the condition a path where detail lives:
ControlNet-style zero-initialised convolutions (Zhang et al. 2023, "Adding Conditional Control",
Sec. 3.1; here from the frozen condition stream's own features, no trainable copy) at chosen
encoder resolutions. Each is a forward hook on one encoder block of the UNet (the UNet and its
state-dict keys stay the prior's): ``h[target] += phi x conv(h[condition])``, one way only,
with the same per-call ``phi`` as BoostHub.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError
from flipnet.models.attention import Attention, AttnProcessor
from flipnet.models.unet import Downsample, ResBlock, UNet


class BoostHubProcessor(nn.Module):
    """``attn1`` processor for stacked ``[target; condition]`` tokens: self-attn + phi x BoostHub."""

    def __init__(self, channels: int, *, phi: float = 1.0):
        super().__init__()
        self.phi = float(phi)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)  # starts as the identity (adds zero)
        nn.init.zeros_(self.to_out.bias)
        self._plain = AttnProcessor()

    @torch.no_grad()
    def init_from(self, attn: Attention) -> BoostHubProcessor:
        """Warm-start q/k/v from the frozen self-attention's projections (output stays zero)."""
        for name in ("to_q", "to_k", "to_v"):
            src = getattr(attn, name)
            src = getattr(src, "base_layer", src)  # a peft LoRA wrapper keeps the original here
            getattr(self, name).weight.copy_(src.weight)
            getattr(self, name).bias.copy_(src.bias)
        return self

    def boost(self, attn: Attention, target: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """BoostHub(target (B, T, C), condition (B, T, C)) -> (B, T, C): Q from target, K/V from cond."""
        q = attn.split_heads(self.to_q(target))  # (B, H, T, d)
        k = attn.split_heads(self.to_k(cond))  # (B, H, T, d)
        v = attn.split_heads(self.to_v(cond))  # (B, H, T, d)
        return self.to_out(attn.merge_heads(F.scaled_dot_product_attention(q, k, v)))

    def forward(self, attn: Attention, hidden_states: torch.Tensor,
                context: torch.Tensor | None = None, *, phi: float | None = None,
                frozen_condition: bool = False, **kwargs) -> torch.Tensor:
        """(2B, T, C) stacked [target; condition] -> (2B, T, C); ``phi`` for this call only
        (default: the processor's own); ``frozen_condition``: the condition half without LoRA."""
        if hidden_states.shape[0] % 2:
            raise ConfigError("BoostHub expects [target; condition] stacked on the batch axis "
                              f"(an even batch), got {hidden_states.shape[0]}")
        phi = self.phi if phi is None else float(phi)
        # (2B, T, C): the prior's self-attention (+ LoRA, on the target half only when frozen)
        out = self._plain(attn, hidden_states, frozen_condition=frozen_condition)
        if phi == 0.0:
            return out
        target, cond = hidden_states.chunk(2)  # (B, T, C) each
        boosted = out[: target.shape[0]] + phi * self.boost(attn, target, cond)
        return torch.cat([boosted, out[target.shape[0]:]])


def install_boosthubs(unet: nn.Module, *, phi: float = 1.0) -> dict[str, BoostHubProcessor]:
    """Put a fresh BoostHub on every ``attn1`` of ``unet``; returns them by module path."""
    hubs = {}
    for name, m in unet.named_modules():
        if isinstance(m, Attention) and name.endswith("attn1"):
            hub = BoostHubProcessor(m.heads * m.head_dim, phi=phi).init_from(m)
            m.set_processor(hub)
            hubs[name] = hub
    if not hubs:
        raise ConfigError("install_boosthubs: the UNet has no self-attention (attn1) layers")
    return hubs


class Injection(nn.Module):
    """Forward hook of one encoder block: target half += phi x zero-init conv(condition half)."""

    def __init__(self, channels: int, *, phi: float = 1.0):
        super().__init__()
        self.phi = float(phi)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)  # starts as the identity (adds zero)
        nn.init.zeros_(self.conv.bias)

    def forward(self, block: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """Hook for ``block(h, emb, context, attn_kwargs)``: out (2B, C, H, W) stacked
        [target; condition] -> the same with the target half injected; ``phi`` from the call's
        attention kwargs (default: this module's own)."""
        if out.shape[0] % 2:
            raise ConfigError("injection expects [target; condition] stacked on the batch axis "
                              f"(an even batch), got {out.shape[0]}")
        kwargs = (args[3] if len(args) > 3 else None) or {}
        phi = float(kwargs.get("phi", self.phi))
        if phi == 0.0:
            return out
        target, cond = out.chunk(2)  # (B, C, H, W) each
        return torch.cat([target + phi * self.conv(cond), cond])


def encoder_blocks(unet: UNet) -> list[tuple[int, int]]:
    """(resolution in px, channels) of each ``unet.input_blocks`` output, in order."""
    px, ch, out = unet.config.image_size, 0, []
    for block in unet.input_blocks:
        for layer in block:
            if isinstance(layer, nn.Conv2d):
                ch = layer.out_channels
            elif isinstance(layer, ResBlock):
                ch = layer.out_layers[-1].out_channels
                if isinstance(layer.h_upd, Downsample):  # resblock_updown
                    px //= 2
            elif isinstance(layer, Downsample):
                px //= 2
        out.append((px, ch))
    return out


def install_injections(unet: UNet, resolutions: tuple[int, ...], *,
                       phi: float = 1.0) -> nn.ModuleDict:
    """Hook a fresh ``Injection`` on every encoder block of ``unet`` whose output is at one of
    ``resolutions`` (px); returns them keyed ``input_blocks_<i>`` (for the caller to own)."""
    blocks = encoder_blocks(unet)
    have = sorted({px for px, _ in blocks}, reverse=True)
    missing = sorted(set(resolutions) - set(have))
    if missing:
        raise ConfigError(f"injection_resolutions: no encoder block at {missing[0]} px (the "
                          f"UNet has {', '.join(map(str, have))})")
    hooks = nn.ModuleDict()
    for i, (px, ch) in enumerate(blocks):
        if px in resolutions:
            hooks[f"input_blocks_{i}"] = hook = Injection(ch, phi=phi)
            unet.input_blocks[i].register_forward_hook(hook)
    return hooks


def set_phi(unet: nn.Module, phi: float, *, extra: nn.Module | None = None) -> int:
    """Set the default ``phi`` of every BoostHub of ``unet`` and every ``Injection`` of ``extra``
    (not thread-safe: for a per-call value pass ``phi`` in the attention kwargs); returns how
    many were set."""
    mods = [m for m in unet.modules() if isinstance(m, BoostHubProcessor)]
    mods += [m for m in (extra.modules() if extra is not None else ()) if isinstance(m, Injection)]
    for m in mods:
        m.phi = float(phi)
    return len(mods)
