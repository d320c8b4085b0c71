"""Attention with separate ``to_q``/``to_k``/``to_v``/``to_out`` projections and a swappable processor.

The module only owns the projections; *how* attention is computed lives in a processor, called as
``processor(attn, hidden_states, context=None, **kwargs)`` (the diffusers convention). The default
processor is plain scaled-dot-product attention (Vaswani et al. 2017, eq. 1). Adapters such as
FLIPNET's BoostHub install their own processor with ``UNet.set_attn_processor`` and may keep extra
modules of their own, while peft LoRA targets the ``to_q``/``to_k``/``to_v``/``to_out`` linears by name.

FLIPNET's frozen condition stream: a call with ``frozen_condition=True`` (passed per call through
the UNet's ``cross_attention_kwargs``) says the batch is ``[target; condition]`` and the condition
half must run the plain prior: its attention uses the frozen projections only (a peft LoRA
wrapper's ``base_layer``, no LoRA delta) and skips the new cross-attention ``attn2``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError


class AttnProcessorLike(Protocol):
    """What ``Attention`` calls: ``(attn, hidden_states (B, T, C), context (B, S, D) | None) -> (B, T, C)``."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 context: torch.Tensor | None = None, **kwargs) -> torch.Tensor: ...


def base_layer(layer: nn.Module) -> nn.Module:
    """The frozen linear under a peft LoRA wrapper (``layer.base_layer``), else ``layer`` itself."""
    return getattr(layer, "base_layer", layer)


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor | None = None, *,
           plain: bool = False) -> torch.Tensor:
    """Multi-head attention (B, T, C) [+ context (B, S, D)] -> (B, T, C) over the module's
    projections; ``plain``: the frozen projections only (no LoRA delta)."""
    proj = base_layer if plain else (lambda layer: layer)
    source = context if (attn.is_cross and context is not None) else hidden_states
    q = attn.split_heads(proj(attn.to_q)(hidden_states))  # (B, H, T, d)
    k = attn.split_heads(proj(attn.to_k)(source))  # (B, H, S, d)
    v = attn.split_heads(proj(attn.to_v)(source))  # (B, H, S, d)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, d)
    return proj(attn.to_out)(attn.merge_heads(out))  # (B, T, C)


def has_lora(attn: Attention) -> bool:
    """Whether any projection of ``attn`` is wrapped by peft LoRA."""
    return any(hasattr(getattr(attn, n), "base_layer") for n in ("to_q", "to_k", "to_v", "to_out"))


class AttnProcessor:
    """Default processor: multi-head scaled-dot-product attention over the module's projections."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor,
                 context: torch.Tensor | None = None, *, frozen_condition: bool = False,
                 **kwargs) -> torch.Tensor:
        """Self-attention when ``context`` is None (or the module is not cross), else
        cross-attention; ``frozen_condition``: the second half of the batch gets the frozen
        projections only (computed over the whole batch, exactly as the plain prior does)."""
        if not (frozen_condition and has_lora(attn)):
            return attend(attn, hidden_states, context)
        n = _half(hidden_states)
        plain = attend(attn, hidden_states, context, plain=True)  # (2B, T, C): the prior's
        target = attend(attn, hidden_states[:n], None if context is None else context[:n])
        return torch.cat([target, plain[n:]])


def _half(x: torch.Tensor) -> int:
    """Size of the target half of a stacked ``[target; condition]`` batch."""
    if x.shape[0] % 2:
        raise ConfigError("frozen_condition expects [target; condition] stacked on the batch "
                          f"axis (an even batch), got {x.shape[0]}")
    return x.shape[0] // 2


class Attention(nn.Module):
    """Multi-head attention: projections ``to_q``, ``to_k``, ``to_v``, ``to_out`` + a processor."""

    def __init__(self, query_dim: int, *, heads: int, context_dim: int | None = None,
                 zero_out: bool = False, processor: AttnProcessorLike | None = None):
        super().__init__()
        if heads < 1 or query_dim % heads:
            raise ConfigError(f"attention width {query_dim} is not divisible into {heads} heads")
        self.heads = heads
        self.head_dim = query_dim // heads
        self.is_cross = context_dim is not None
        kv_dim = context_dim if context_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(kv_dim, query_dim)
        self.to_v = nn.Linear(kv_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)
        if zero_out:  # the block starts as the identity (residual adds zero)
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)
        self.processor: AttnProcessorLike = processor or AttnProcessor()

    def set_processor(self, processor: AttnProcessorLike) -> None:
        """Install a processor (a callable; an ``nn.Module`` one is registered as a submodule)."""
        self._modules.pop("processor", None)  # allow replacing a module processor by a plain one
        self.__dict__.pop("processor", None)
        self.processor = processor

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H*d) -> (B, H, T, d)."""
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, T, d) -> (B, T, H*d)."""
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        """Delegate to the processor: (B, T, C) [+ context (B, S, D)] -> (B, T, C)."""
        return self.processor(self, hidden_states, context=context, **kwargs)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as guided-diffusion's ``normalization``), cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise in float32 for stability under bf16/fp16."""
        return super().forward(x.float()).type(x.dtype)


class AttentionBlock(nn.Module):
    """Spatial attention block: self-attention (``attn1``), then optional cross-attention (``attn2``).

    ``attn1`` reproduces guided-diffusion's ``AttentionBlock`` (GroupNorm -> qkv -> proj_out,
    residual). ``attn2`` exists only when ``context_dim`` is set; its output projection starts at
    zero, so the block equals the unconditional one until trained. With ``frozen_condition``
    (FLIPNET, per call) ``attn2`` runs on the target half only.
    """

    def __init__(self, channels: int, *, heads: int, norm_groups: int = 32,
                 context_dim: int | None = None):
        super().__init__()
        self.norm = GroupNorm32(norm_groups, channels)
        self.attn1 = Attention(channels, heads=heads, zero_out=True)
        self.norm_cross = nn.LayerNorm(channels) if context_dim else None
        self.attn2 = (Attention(channels, heads=heads, context_dim=context_dim, zero_out=True)
                      if context_dim else None)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                frozen_condition: bool = False, **kwargs) -> torch.Tensor:
        """(B, C, H, W) [+ context (B, S, D)] -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).transpose(1, 2)  # (B, T, C)
        normed = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, T, C)
        # the flag reaches attn1's processor only when set: other processors never see it
        frozen = {"frozen_condition": True} if frozen_condition else {}
        tokens = tokens + self.attn1(normed, **frozen, **kwargs)
        if self.attn2 is not None and context is not None:
            if frozen_condition:  # the condition half (second) gets no cross-attention
                n = _half(tokens)
                cross = self.attn2(self.norm_cross(tokens[:n]), context=context[:n], **kwargs)
                # adding zero (not concatenating) keeps the prior's memory layout, hence its bits
                cross = torch.cat([cross, torch.zeros_like(cross)])  # (2B, T, C)
            else:
                cross = self.attn2(self.norm_cross(tokens), context=context, **kwargs)
            tokens = tokens + cross
        return tokens.transpose(1, 2).reshape(b, c, h, w)
