"""FLIPNET's BFR-oriented face embedding (arXiv 2508.08556, Sec. 3 "face embedding"; our reading).

Two encoder-decoder pairs map a face to a sequence of S tokens of width D and back:

* stage I (reconstruction): the HQ pair learns to reconstruct HQ faces, the LQ pair LQ faces;
* stage II (alignment): the LQ encoder learns to give, for an LQ face, the token sequence the
  frozen HQ encoder gives for the HQ version of the same face. The loss is contrastive: a B x B
  similarity matrix between the flattened, normalised LQ and HQ token sequences of a batch, with
  the diagonal as the target (InfoNCE / CLIP-style cross-entropy in both directions, temperature).

The tokens feed the UNet's cross-attention (``attn2``): restoration mode uses the LQ encoder on
the LQ face, degradation mode the HQ encoder on the HQ face. Decoders are only for stage I.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError


@dataclass(frozen=True)
class FaceEmbeddingConfig:
    """Architecture of the face embedder (both pairs share it); saved beside the weights."""

    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128)  # width after each 2x downsampling
    tokens: int = 16  # S, a square number: the token grid is sqrt(S) x sqrt(S)
    dim: int = 128  # D, the token width (the UNet's cross_attention_dim)
    temperature: float = 0.07  # InfoNCE temperature of stage II

    def grid(self) -> int:
        """Side of the token grid."""
        return math.isqrt(self.tokens)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first inconsistent setting."""
        g = self.grid()
        if g * g != self.tokens or g < 1:
            raise ConfigError(f"FaceEmbeddingConfig.tokens={self.tokens} is not a square number")
        if not self.channels or self.image_size % (2 ** len(self.channels)):
            raise ConfigError(f"FaceEmbeddingConfig: image_size {self.image_size} is not divisible"
                              f" by 2^{len(self.channels)}")
        if (self.image_size // g) & (self.image_size // g - 1) or self.image_size % g:
            raise ConfigError(f"FaceEmbeddingConfig: image_size / sqrt(tokens) = "
                              f"{self.image_size / g} must be a power of two")
        if self.temperature <= 0:
            raise ConfigError("FaceEmbeddingConfig.temperature must be positive")


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                         nn.GroupNorm(groups, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out),
                         nn.SiLU())


class FaceEncoder(nn.Module):
    """Small conv net: image (B, 3, H, W) in [-1, 1] -> tokens (B, S, D)."""

    def __init__(self, cfg: FaceEmbeddingConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        chans = (cfg.channels[0], *cfg.channels)
        self.stem = nn.Conv2d(3, chans[0], 3, padding=1)
        self.stages = nn.Sequential(*[_conv_block(a, b, 2) for a, b in pairwise(chans)])
        self.to_tokens = nn.Conv2d(chans[-1], cfg.dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, S, D)."""
        h = self.stages(self.stem(x))  # (B, C, H / 2^n, W / 2^n)
        h = F.adaptive_avg_pool2d(h, self.config.grid())  # (B, C, g, g)
        tokens = self.to_tokens(h).flatten(2).transpose(1, 2)  # (B, S, D)
        return self.norm(tokens + self.pos)


class FaceDecoder(nn.Module):
    """Tokens (B, S, D) -> image (B, 3, H, W) (stage I reconstruction only)."""

    def __init__(self, cfg: FaceEmbeddingConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        ups = int(math.log2(cfg.image_size // cfg.grid()))
        widths = [cfg.channels[-1]] + [cfg.channels[max(0, len(cfg.channels) - 1 - i)]
                                       for i in range(1, ups + 1)]
        self.from_tokens = nn.Conv2d(cfg.dim, widths[0], 1)
        self.stages = nn.Sequential(*[nn.Sequential(nn.Upsample(scale_factor=2), _conv_block(a, b, 1))
                                      for a, b in pairwise(widths)])
        self.out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, 3, H, W)."""
        b, _, d = tokens.shape
        g = self.config.grid()
        h = self.from_tokens(tokens.transpose(1, 2).reshape(b, d, g, g))  # (B, C, g, g)
        return self.out(self.stages(h))


class FaceEmbedder(nn.Module):
    """The HQ and LQ encoder-decoder pairs; ``encode(x, kind)`` gives the UNet's context tokens."""

    def __init__(self, cfg: FaceEmbeddingConfig, *, decoders: bool = True):
        super().__init__()
        self.config = cfg
        self.hq_encoder, self.lq_encoder = FaceEncoder(cfg), FaceEncoder(cfg)
        self.hq_decoder = FaceDecoder(cfg) if decoders else None
        self.lq_decoder = FaceDecoder(cfg) if decoders else None

    def encode(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Tokens (B, S, D) of faces (B, 3, H, W) by the ``kind`` ('hq' | 'lq') encoder."""
        if kind not in ("hq", "lq"):
            raise ConfigError(f"encoder kind must be 'hq' or 'lq', got {kind!r}")
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (self.hq_encoder if kind == "hq" else self.lq_encoder)(x)

    def reconstruct(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """Stage I: encode and decode with the ``kind`` pair: (B, 3, H, W) -> (B, 3, H, W)."""
        decoder = self.hq_decoder if kind == "hq" else self.lq_decoder
        if decoder is None:
            raise ConfigError("this FaceEmbedder was built without decoders")
        return decoder(self.encode(x, kind))


def token_contrastive_loss(lq_tokens: torch.Tensor, hq_tokens: torch.Tensor, *,
                           temperature: float) -> torch.Tensor:
    """Stage II InfoNCE: B x B similarity of flattened normalised token sequences, diagonal target.

    lq_tokens, hq_tokens: (B, S, D) of the same B faces (row i of each is face i).
    """
    if lq_tokens.shape != hq_tokens.shape or lq_tokens.shape[0] < 2:
        raise ConfigError(f"contrastive loss needs two (B>=2, S, D) token sets of one shape, got "
                          f"{tuple(lq_tokens.shape)} and {tuple(hq_tokens.shape)}")
    a = F.normalize(lq_tokens.flatten(1), dim=1)  # (B, S*D)
    b = F.normalize(hq_tokens.flatten(1), dim=1)  # (B, S*D)
    logits = a @ b.T / temperature  # (B, B)
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def reconstruction_loss(embedder: FaceEmbedder, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Stage I: L1(HQ pair(hq), hq) + L1(LQ pair(lq), lq)."""
    size = embedder.config.image_size
    hq, lq = (F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False) if x.shape[-1] != size else x for x in (hq, lq))
    return (F.l1_loss(embedder.reconstruct(hq, "hq"), hq)
            + F.l1_loss(embedder.reconstruct(lq, "lq"), lq))


def alignment_loss(embedder: FaceEmbedder, hq: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """Stage II: contrastive loss of LQ-encoder tokens against frozen HQ-encoder tokens."""
    with torch.no_grad():
        hq_tokens = embedder.encode(hq, "hq")  # (B, S, D), no gradient to the HQ encoder
    return token_contrastive_loss(embedder.encode(lq, "lq"), hq_tokens,
                                  temperature=embedder.config.temperature)


def save_face_embedder(folder, embedder: FaceEmbedder) -> None:
    """Write config.json + fp16 safetensors of an embedder (decoders included when present)."""
    from pathlib import Path

    from flipnet.config import save_config
    from flipnet.weights import save_state_dict

    save_state_dict(Path(folder), embedder.state_dict())
    save_config(embedder.config, Path(folder) / "config.json")


def load_face_embedder(folder, *, device: str | torch.device = "cpu") -> FaceEmbedder:
    """Open an embedder folder written by ``save_face_embedder`` (WeightsError naming it)."""
    from pathlib import Path

    from flipnet.config import load_config
    from flipnet.weights import load_into, load_state_dict

    folder = Path(folder)
    cfg = load_config(FaceEmbeddingConfig, folder / "config.json")
    state = load_state_dict(folder)
    embedder = FaceEmbedder(cfg, decoders=any(k.startswith("hq_decoder.") for k in state))
    load_into(embedder, state, str(folder))
    return embedder.to(device).eval()
