"""Camera RAW degradation: unprocess sRGB to a Bayer mosaic, add sensor noise, re-process.

After Brooks et al., "Unprocessing Images for Learned Raw Denoising" (CVPR 2019, arXiv
1811.11127), Sec. 3. Unprocessing inverts a simple camera ISP:
  inverse smoothstep tone curve -> inverse gamma (x^2.2) -> sRGB-to-camera colour matrix
  (a random convex mix of four XYZ-to-camera matrices times sRGB-to-XYZ, rows normalised to
  sum 1) -> inverse white balance / exposure gains (highlight-preserving) -> RGGB mosaic.
Noise is heteroscedastic Gaussian on the linear mosaic (Brooks eq. 2):
  y ~ N(x, shot * x + read).
The forward ISP re-applies the same gains, bilinear demosaic, camera-to-sRGB matrix, gamma and
smoothstep, so with zero noise the round trip is the identity up to clipping of highlights and
of out-of-gamut colours, and bilinear demosaic error at sharp edges.

ISO model (our choice, documented here): the shot-noise variance is proportional to the analog
gain, ``shot = 1e-4 * ISO / 100``, so ISO 100..12800 spans Brooks' sampled shot range
[1e-4, 1.2e-2]; the read-noise variance follows Brooks' fitted log-log line
``log(read) = 2.18 log(shot) + 1.20`` (+ optional N(0, 0.26) jitter in log space), i.e. it grows
about as ISO^2.18. At ISO 3200: shot = 3.2e-3, read = 1.2e-5 (a mid-grey linear value of 0.2
gets a noise std of 0.026 before the gains and the tone curve amplify it).

Deviations from Brooks: the exposure gain (their ``rgb_gain``) is re-applied by the forward ISP
(they leave the result darker), and it is clipped to [0.5, 1] so that unprocessing never
brightens (which would clip highlights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flipnet.degradations.noise import (
    check_prob,
    check_range,
    draw_bernoulli,
    draw_seed,
    draw_uniform,
    make_generator,
)
from flipnet.errors import ConfigError

ISO_BASE = 100.0
SHOT_AT_BASE_ISO = 1e-4
READ_LINE = (2.18, 1.20)  # log(read) = a * log(shot) + b (Brooks et al. 2019)

# XYZ -> camera matrices of four cameras and the sRGB (D65) -> XYZ matrix, from Brooks et al.
XYZ2CAMS = torch.tensor([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
], dtype=torch.float64)
RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)


@dataclass(frozen=True)
class RawConfig:
    """Camera model ranges: ISO (log-uniform), gains and colour matrix as in Brooks et al."""

    iso: tuple[float, float] = (3200.0, 3200.0)
    read_jitter: float = 0.26  # std of log(read) around the fitted line; 0 = ISO decides alone
    exposure: tuple[float, float] = (0.8, 0.1)  # mean, std of the darkening gain (1/rgb_gain)
    red_gain: tuple[float, float] = (1.9, 2.4)
    blue_gain: tuple[float, float] = (1.5, 1.9)
    prob: float = 1.0

    def __post_init__(self):
        check_range("raw.iso", self.iso, low=0.0)
        if self.iso[0] == 0.0 and self.iso[1] > 0.0:
            raise ConfigError("raw.iso: a range is sampled log-uniformly and must start above 0 "
                              "(use (0, 0) for no noise)")
        if self.read_jitter < 0 or self.exposure[1] < 0:
            raise ConfigError("raw.read_jitter and the std of raw.exposure must be >= 0")
        check_range("raw.red_gain", self.red_gain, low=1e-3)
        check_range("raw.blue_gain", self.blue_gain, low=1e-3)
        check_prob("raw.prob", self.prob)


def noise_levels(iso: float) -> tuple[float, float]:
    """(shot, read) noise variances of the linear mosaic at ``iso`` (see the module doc)."""
    if iso <= 0:
        return 0.0, 0.0
    shot = SHOT_AT_BASE_ISO * iso / ISO_BASE
    return shot, math.exp(READ_LINE[0] * math.log(shot) + READ_LINE[1])


def sample_raw_params(cfg: RawConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's camera: ISO, noise variances, gains, colour-matrix mix, noise seed."""
    apply = draw_bernoulli(generator, cfg.prob)
    lo, hi = cfg.iso
    u = draw_uniform(generator, 0.0, 1.0)
    iso = lo if lo == hi else math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    jitter = torch.randn((), generator=generator, dtype=torch.float64).item() * cfg.read_jitter
    shot, read = noise_levels(iso)
    read *= math.exp(jitter)
    exposure = torch.randn((), generator=generator, dtype=torch.float64).item()
    exposure = min(max(cfg.exposure[0] + cfg.exposure[1] * exposure, 0.5), 1.0)
    red = draw_uniform(generator, *cfg.red_gain)
    blue = draw_uniform(generator, *cfg.blue_gain)
    weights = [draw_uniform(generator, 1e-8, 1.0) for _ in range(len(XYZ2CAMS))]
    seed = draw_seed(generator)
    if not apply:
        return None
    return {"iso": iso, "shot": shot, "read": read, "exposure": exposure, "red_gain": red,
            "blue_gain": blue, "ccm_weights": weights, "seed": seed}


def rgb2cam_matrix(weights: Sequence[float]) -> torch.Tensor:
    """(3,3) sRGB -> camera matrix from a convex mix of ``XYZ2CAMS``, rows summing to 1."""
    w = torch.tensor(weights, dtype=torch.float64).view(-1, 1, 1)
    xyz2cam = (XYZ2CAMS * w).sum(0) / w.sum()
    rgb2cam = xyz2cam @ RGB2XYZ
    return rgb2cam / rgb2cam.sum(dim=-1, keepdim=True)


def inverse_smoothstep(x: torch.Tensor) -> torch.Tensor:
    """Invert the tone curve 3x^2 - 2x^3 on [0,1]."""
    x = x.clamp(0.0, 1.0)
    return 0.5 - torch.sin(torch.asin(1.0 - 2.0 * x) / 3.0)


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    """The global tone curve 3x^2 - 2x^3."""
    return 3.0 * x**2 - 2.0 * x**3


def apply_ccm(x: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
    """Apply per-image colour matrices ccm (N,3,3) to x (N,3,H,W)."""
    return torch.einsum("nij,njhw->nihw", ccm.to(x), x)


def bayer_masks(h: int, w: int, device=None) -> torch.Tensor:
    """(1,3,H,W) 0/1 masks of the R, G, B sites of an RGGB mosaic."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    r = (yy % 2 == 0) & (xx % 2 == 0)
    b = (yy % 2 == 1) & (xx % 2 == 1)
    return torch.stack([r, ~(r | b), b]).float()[None]


def mosaic(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) -> (N,1,H,W) RGGB Bayer mosaic (one colour sample per pixel)."""
    return (x * bayer_masks(x.shape[-2], x.shape[-1], x.device)).sum(1, keepdim=True)


def demosaic_bilinear(bayer: torch.Tensor) -> torch.Tensor:
    """(N,1,H,W) RGGB mosaic -> (N,3,H,W) by bilinear interpolation (H, W >= 2)."""
    h, w = bayer.shape[-2:]
    planes = bayer * bayer_masks(h, w, bayer.device)  # (N,3,H,W), zeros off-site
    k_rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4.0
    k_g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0
    weight = torch.stack([k_rb, k_g, k_rb])[:, None].to(bayer)  # (3,1,3,3)
    # reflect padding by 1 keeps the colour of each mirrored site (same row/column parity)
    return F.conv2d(F.pad(planes, (1, 1, 1, 1), mode="reflect"), weight, groups=3)


def _gains(params: Sequence[dict]) -> torch.Tensor:
    """(N,3) forward white-balance x exposure gains."""
    return torch.tensor([[p["red_gain"], 1.0, p["blue_gain"]] for p in params],
                        dtype=torch.float64) / torch.tensor([[p["exposure"]] for p in params],
                                                            dtype=torch.float64)


def unprocess(x01: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
    """sRGB (N,3,H,W) in [0,1] -> linear camera RGB in [0,1] (before mosaicking)."""
    rgb2cam = torch.stack([rgb2cam_matrix(p["ccm_weights"]) for p in params])  # (N,3,3)
    lin = inverse_smoothstep(x01).clamp_min(1e-8) ** 2.2
    cam = apply_ccm(lin, rgb2cam)
    inv = (1.0 / _gains(params)).to(x01)[:, :, None, None]  # (N,3,1,1)
    gray = cam.mean(dim=1, keepdim=True)
    mask = ((gray - 0.9).clamp_min(0.0) / 0.1) ** 2  # highlight-preserving gains (Brooks)
    safe = torch.maximum(mask + (1.0 - mask) * inv, inv)
    return (cam * safe).clamp(0.0, 1.0)


def add_sensor_noise(bayer: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
    """Add N(0, shot * x + read) to each mosaic of bayer (N,1,H,W), one generator per image."""
    out = []
    for b, p in zip(bayer, params):
        if p["shot"] <= 0 and p["read"] <= 0:
            out.append(b)
            continue
        z = torch.randn(b.shape, generator=make_generator(p["seed"]), dtype=torch.float32)
        std = (p["shot"] * b.clamp_min(0.0) + p["read"]).sqrt()
        out.append(b + std * z.to(b.device))
    return torch.stack(out)


def process(bayer: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
    """Forward ISP: mosaic (N,1,H,W) -> sRGB (N,3,H,W) in [0,1].

    A (N,3,H,W) linear camera image is accepted too and skips the demosaic (for tests of the
    colour pipeline alone).
    """
    h, w = bayer.shape[-2:]
    gains = _gains(params).to(bayer)[:, :, None, None]  # (N,3,1,1)
    if bayer.shape[1] == 3:
        cam = (bayer * gains).clamp(0.0, 1.0)
    else:
        site_gain = (bayer_masks(h, w, bayer.device) * gains).sum(1, keepdim=True)  # (N,1,H,W)
        cam = demosaic_bilinear((bayer * site_gain).clamp(0.0, 1.0))
    cam2rgb = torch.stack([torch.linalg.inv(rgb2cam_matrix(p["ccm_weights"])) for p in params])
    rgb = apply_ccm(cam, cam2rgb).clamp(0.0, 1.0)
    return smoothstep(rgb.clamp_min(1e-8) ** (1.0 / 2.2)).clamp(0.0, 1.0)


def simulate_raw(x: torch.Tensor, params: Sequence[dict]) -> torch.Tensor:
    """x (N,3,H,W) in [-1,1] through unprocess -> mosaic -> sensor noise -> ISP; same range."""
    if min(x.shape[-2:]) < 2:
        raise ValueError(f"the RAW pipeline needs images of at least 2x2, got {tuple(x.shape)}")
    bayer = mosaic(unprocess((x + 1.0) / 2.0, params))
    return process(add_sensor_noise(bayer, params), params) * 2.0 - 1.0


def apply_raw(x: torch.Tensor, params: Sequence[dict | None]) -> torch.Tensor:
    """Run the RAW simulation on the images of x (N,3,H,W) whose params are not None."""
    idx = [i for i, p in enumerate(params) if p is not None]
    if not idx:
        return x
    out = x.clone()
    out[idx] = simulate_raw(x[idx], [params[i] for i in idx])
    return out
