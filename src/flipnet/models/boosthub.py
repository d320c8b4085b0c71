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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError
from flipnet.models.attention import Attention, AttnProcessor


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
                **kwargs) -> torch.Tensor:
        """(2B, T, C) stacked [target; condition] -> (2B, T, C); ``phi`` for this call only
        (default: the processor's own)."""
        if hidden_states.shape[0] % 2:
            raise ConfigError("BoostHub expects [target; condition] stacked on the batch axis "
                              f"(an even batch), got {hidden_states.shape[0]}")
        phi = self.phi if phi is None else float(phi)
        out = self._plain(attn, hidden_states)  # (2B, T, C): the frozen prior's self-attention
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


def set_phi(unet: nn.Module, phi: float) -> int:
    """Set the default ``phi`` of every BoostHub of ``unet`` (not thread-safe: for a per-call
    value pass ``phi`` in the attention kwargs); returns how many were set."""
    hubs = [m for m in unet.modules() if isinstance(m, BoostHubProcessor)]
    for hub in hubs:
        hub.phi = float(phi)
    return len(hubs)
