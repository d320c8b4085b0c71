"""A small PatchGAN discriminator for the restorer's adversarial loss.

PatchGAN (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR
2017): strided 4x4 convs with LeakyReLU that end in one logit per overlapping patch, so it judges
local texture, which is what a restorer's L1 loss leaves blurry. Spectral normalisation (Miyato
et al., ICLR 2018) on every conv keeps it Lipschitz, so no normalisation layers are needed and the
small GAN weight used by the restorer's training stays stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from flipnet.errors import ConfigError


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Width and depth of the PatchGAN; the receptive field grows with ``layers``."""

    width: int = 16  # channels of the first conv, doubled per layer (capped at 8 * width)
    layers: int = 3  # stride-2 convs: a 128 px input gives (128 / 2^layers)^2 patch logits

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad setting."""
        if self.width <= 0 or self.layers < 1:
            raise ConfigError(f"DiscriminatorConfig: width {self.width} and layers "
                              f"{self.layers} must be positive")


class PatchDiscriminator(nn.Module):
    """``forward(x (B, 3, H, W) in [-1, 1]) -> logits (B, 1, H / 2^layers, W / 2^layers)``."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        cfg.validate()
        self.config = cfg
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(cfg.layers):
            c_out = cfg.width * min(2**i, 8)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        layers += [spectral_norm(nn.Conv2d(c_in, c_in, 3, padding=1)),
                   nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits: positive = looks like a real high-quality face patch."""
        return self.net(x)
