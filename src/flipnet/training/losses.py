"""Losses of the feed-forward restorer; each one a short callable ``loss(pred, target) -> scalar``.

* ``l1_loss``                pixel L1 (the main term).
* ``pyramid_l1_loss``        L1 on 2x, 4x, 8x average-pooled copies: coarse structure counts more.
* ``fft_amplitude_loss``     L1 between 2-D Fourier amplitudes (the frequency loss of MIMO-UNet,
                             Cho et al. ICCV 2021, on amplitudes): penalises missing high
                             frequencies that pixel L1 forgives. With the pyramid term it is the
                             offline stand-in for a perceptual loss.
* ``PriorFeatureLoss``       perceptual term from flipnet's own diffusion prior: L1 between the
                             feature maps of its UNet encoder (``input_blocks``) on both images
                             resized to the prior's size and noised to a small step t with the same
                             fixed noise (a "diffusion feature" distance; nothing downloaded).
* ``LPIPSLoss``              LPIPS (Zhang et al. CVPR 2018) when the user gives backbone weights.
* ``gan_generator_loss`` / ``gan_discriminator_loss``: non-saturating (Goodfellow et al. 2014)
                             or hinge (Lim & Ye 2017) adversarial losses on PatchGAN logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flipnet.errors import ConfigError, WeightsError

PERCEPTUAL_KINDS = ("auto", "prior", "lpips", "none")
GAN_KINDS = ("nonsat", "hinge")


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels."""
    return (pred - target).abs().mean()


def pyramid_l1_loss(pred: torch.Tensor, target: torch.Tensor, *, levels: int = 3) -> torch.Tensor:
    """Mean of L1 on ``levels`` average-pooled copies (factors 2, 4, ... 2^levels)."""
    total = pred.new_zeros(())
    for k in range(1, levels + 1):
        f = 2**k
        if min(pred.shape[-2:]) < f:
            break
        total = total + l1_loss(F.avg_pool2d(pred, f), F.avg_pool2d(target, f))
    return total / levels


def fft_amplitude_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between |rfft2| amplitudes (orthonormal FFT, so it is on the scale of pixel L1)."""
    amp_pred = torch.fft.rfft2(pred.float(), norm="ortho").abs()  # (B, C, H, W//2+1)
    amp_target = torch.fft.rfft2(target.float(), norm="ortho").abs()
    return l1_loss(amp_pred, amp_target)


def gan_generator_loss(fake_logits: torch.Tensor, kind: str = "nonsat") -> torch.Tensor:
    """Generator side: non-saturating softplus(-D(G(y))) or hinge -D(G(y)), averaged."""
    if kind == "nonsat":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_KINDS)}")


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                           kind: str = "nonsat") -> torch.Tensor:
    """Discriminator side: softplus(-D(x)) + softplus(D(G(y))), or the hinge relu(1 -+ D)."""
    if kind == "nonsat":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ConfigError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_KINDS)}")


class PriorFeatureLoss(nn.Module):
    """L1 between a frozen diffusion prior's encoder features of pred and target at step ``t``.

    Pixel and latent priors alike: on a latent prior both images go through its frozen encoder
    first (differentiable, so the gradient reaches pred through it)."""

    def __init__(self, prior, *, t: int = 50, blocks: int | None = None, seed: int = 0):
        super().__init__()
        from flipnet.diffusion.schedules import make_schedule
        from flipnet.models.unet import timestep_embedding

        unet = prior.model
        if not (hasattr(unet, "input_blocks") and hasattr(unet, "time_embed")):
            raise WeightsError(f"{prior.source}: prior feature loss needs a flipnet UNet prior "
                               f"(got a {prior.kind} model)")
        self.unet = unet.eval().requires_grad_(False)
        ae = getattr(prior, "autoencoder", None)
        self.autoencoder = None if ae is None else ae.eval().requires_grad_(False)
        self.size, self.t = prior.image_size, t
        self.blocks = blocks or len(unet.input_blocks)
        abar = float(make_schedule(prior.schedule).alphas_cumprod[t])
        self.a, self.s = abar**0.5, (1 - abar) ** 0.5
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("noise", torch.randn((1, *prior.latent_shape), generator=g))
        tt = torch.full((1,), float(t))
        with torch.no_grad():
            emb = unet.time_embed(timestep_embedding(tt, unet.config.model_channels))
        self.register_buffer("emb", emb)  # (1, 4 * model_channels)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps of x (B, 3, H, W) in [-1, 1] after resize, encoding (latent
        priors) and noising."""
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear",
                          align_corners=False, antialias=True)
        z = x if self.autoencoder is None else self.autoencoder.encode(x)
        h = self.a * z + self.s * self.noise  # z_t with the same noise for pred and target
        emb = self.emb.expand(x.shape[0], -1)
        out = []
        for block in self.unet.input_blocks[: self.blocks]:
            h = block(h, emb)
            out.append(h)  # (B, C_l, H_l, W_l)
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over blocks of the feature L1 (target features are not differentiated)."""
        with torch.no_grad():
            ref = self.features(target)
        feats = self.features(pred)
        return sum(l1_loss(f, r) for f, r in zip(feats, ref)) / len(feats)


class LPIPSLoss(nn.Module):
    """Mean LPIPS distance of a frozen ``flipnet.metrics.lpips.LPIPS`` model."""

    def __init__(self, lpips_model: nn.Module):
        super().__init__()
        self.lpips = lpips_model.eval().requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS(pred, target) averaged over the batch."""
        return self.lpips(pred.float(), target.float()).mean()


def resolve_perceptual(kind: str, *, prior_path: str | os.PathLike | None = None) -> str:
    """``auto`` -> ``prior`` when the prior folder exists, else ``none``; others unchanged."""
    if kind not in PERCEPTUAL_KINDS:
        raise ConfigError(f"unknown perceptual loss {kind!r}; choose one of "
                          f"{', '.join(PERCEPTUAL_KINDS)}")
    if kind == "auto":
        return "prior" if prior_path and (Path(prior_path) / "config.json").is_file() else "none"
    return kind


def make_perceptual_loss(kind: str, *, prior_path: str | os.PathLike | None = None,
                         prior_t: int = 50, lpips_net: str = "alex",
                         lpips_backbone: str | os.PathLike | None = None,
                         device: str | torch.device = "cpu") -> nn.Module | None:
    """The perceptual term named ``kind`` (after ``resolve_perceptual``), or None for ``none``."""
    kind = resolve_perceptual(kind, prior_path=prior_path)
    if kind == "none":
        return None
    if kind == "prior":
        if not prior_path:
            raise ConfigError("perceptual loss 'prior' needs prior_path (a prior folder)")
        from flipnet.models.prior import load_prior

        return PriorFeatureLoss(load_prior(prior_path), t=prior_t).to(device)
    from flipnet.metrics.lpips import load_lpips

    return LPIPSLoss(load_lpips(lpips_net, lpips_backbone)).to(device)
