"""LoRA (Hu et al. 2022, eq. 3: W + (alpha / r) B A, B zero-initialised) on the frozen prior's
attention projections, through peft's ``inject_adapter_in_model``.

The targets are every ``to_q``/``to_k``/``to_v``/``to_out`` linear of the frozen ``attn1``
(self-attention) and, with ``cross_attention=True`` (the first FLIPNET folders), of the new
``attn2`` (cross-attention to the face embedding; redundant there, since ``attn2`` itself trains
in full), matched by a regular expression on the module path, so the BoostHub processors' own
projections (``attn1.processor.to_q``...) are never wrapped. peft renames a wrapped
``x.to_q.weight`` to ``x.to_q.base_layer.weight`` and adds ``x.to_q.lora_A.default.weight`` /
``lora_B``; ``prior_key`` maps names back.
"""

from __future__ import annotations

from torch import nn

from flipnet.errors import ConfigError

LORA_TARGETS = r".*\.attn[12]\.to_(q|k|v|out)$"  # self- and cross-attention
LORA_TARGETS_SELF = r".*\.attn1\.to_(q|k|v|out)$"  # the frozen self-attention only


def add_lora(unet: nn.Module, *, rank: int = 8, alpha: float = 8.0, dropout: float = 0.0,
             cross_attention: bool = True) -> nn.Module:
    """Inject LoRA adapters (rank ``rank``, scale alpha / rank) into ``unet`` in place, on
    ``attn1`` and (``cross_attention``) ``attn2``."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    flags = {id(p): p.requires_grad for p in unet.parameters()}
    targets = LORA_TARGETS if cross_attention else LORA_TARGETS_SELF
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     init_lora_weights=True)
    unet = inject_adapter_in_model(cfg, unet)
    # peft freezes every non-LoRA parameter; trainability is decided by the caller, so restore it
    for p in unet.parameters():
        if id(p) in flags:
            p.requires_grad_(flags[id(p)])
    return unet


def prior_key(key: str) -> str:
    """A (possibly LoRA-wrapped) state-dict key as it is named in the plain prior."""
    return key.replace(".base_layer.", ".")
