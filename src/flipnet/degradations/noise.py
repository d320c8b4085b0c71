"""Random draws from an explicit ``torch.Generator``, and additive Gaussian / Poisson noise.

The draw helpers are shared by every degradation stage: each one consumes the generator in a
fixed order (a Bernoulli draw is made even when its probability is 0 or 1), so a stage's values
depend only on its generator, never on global RNG state.

Noise follows BasicSR (used by GFPGAN / CodeFormer / DifFace): Gaussian std ``sigma`` on the
0-255 scale, optional "gray" noise (one noise field shared by R, G, B), clip after adding.
Poisson noise follows Real-ESRGAN's ``generate_poisson_noise`` with the level count fixed at
256 (what BasicSR computes for an 8-bit photo): ``noise = (Poisson(256 v) / 256 - v) * scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flipnet.errors import ConfigError

POISSON_LEVELS = 256.0
NOISE_KINDS = ("gaussian", "poisson")


# ---------------------------------------------------------------- random draws


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(int(seed))


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float uniform in ``[low, high)`` (float64 precision, JSON-exact)."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return float(low) + (float(high) - float(low)) * u


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """One integer uniform in ``[low, high]`` (both ends included)."""
    return int(torch.randint(int(low), int(high) + 1, (), generator=generator).item())


def draw_bernoulli(generator: torch.Generator, p: float) -> bool:
    """True with probability ``p``; always consumes one draw."""
    return draw_uniform(generator, 0.0, 1.0) < p


def draw_choice(generator: torch.Generator, items: Sequence, probs: Sequence[float]):
    """One of ``items`` with the given (not necessarily normalised) probabilities."""
    u = draw_uniform(generator, 0.0, float(sum(probs)))
    acc = 0.0
    for item, p in zip(items, probs):
        acc += p
        if u < acc:
            return item
    return items[-1]


def draw_seed(generator: torch.Generator) -> int:
    """A fresh 62-bit seed (for a sub-generator: per image, per stage, per noise field)."""
    return int(torch.randint(0, 2**62, (), generator=generator).item())


# ---------------------------------------------------------------- config checks


def check_range(where: str, rng: Sequence[float], *, low: float | None = None,
                high: float | None = None) -> None:
    """Raise ``ConfigError`` unless ``rng`` is a (lo, hi) pair with lo <= hi inside the bounds."""
    if len(rng) != 2 or rng[0] > rng[1]:
        raise ConfigError(f"{where}: expected a (low, high) pair with low <= high, got {rng!r}")
    if low is not None and rng[0] < low:
        raise ConfigError(f"{where}: {rng[0]} is below the minimum {low}")
    if high is not None and rng[1] > high:
        raise ConfigError(f"{where}: {rng[1]} is above the maximum {high}")


def check_choices(where: str, items: Sequence[str], probs: Sequence[float],
                  allowed: Sequence[str]) -> None:
    """Raise ``ConfigError`` unless ``items`` are allowed names with matching non-negative probs."""
    bad = [i for i in items if i not in allowed]
    if bad or not items:
        raise ConfigError(f"{where}: unknown or missing choices {bad or items}; "
                          f"allowed: {', '.join(allowed)}")
    if len(probs) != len(items) or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ConfigError(f"{where}: need one non-negative probability per choice, got {probs!r}")


def check_prob(where: str, p: float) -> None:
    """Raise ``ConfigError`` unless ``0 <= p <= 1``."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{where}: probability must be in [0, 1], got {p}")


# ---------------------------------------------------------------- noise stage


@dataclass(frozen=True)
class NoiseConfig:
    """Additive noise: kind drawn from ``kinds``; Gaussian ``sigma`` on the 0-255 scale."""

    kinds: tuple[str, ...] = ("gaussian",)
    kind_probs: tuple[float, ...] = (1.0,)
    sigma: tuple[float, float] = (0.0, 20.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)  # Real-ESRGAN's poisson_scale_range
    gray_prob: float = 0.0
    prob: float = 1.0

    def __post_init__(self):
        check_choices("noise.kinds", self.kinds, self.kind_probs, NOISE_KINDS)
        check_range("noise.sigma", self.sigma, low=0.0)
        check_range("noise.poisson_scale", self.poisson_scale, low=0.0)
        check_prob("noise.gray_prob", self.gray_prob)
        check_prob("noise.prob", self.prob)


def sample_noise_params(cfg: NoiseConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's noise settings (kind, level, gray, noise seed), or None if skipped."""
    apply = draw_bernoulli(generator, cfg.prob)
    kind = draw_choice(generator, cfg.kinds, cfg.kind_probs)
    level = draw_uniform(generator, *(cfg.sigma if kind == "gaussian" else cfg.poisson_scale))
    gray = draw_bernoulli(generator, cfg.gray_prob)
    seed = draw_seed(generator)
    if not apply:
        return None
    key = "sigma" if kind == "gaussian" else "scale"
    return {"kind": kind, key: level, "gray": gray, "seed": seed}


def add_gaussian_noise(x: torch.Tensor, sigma: float, *, gray: bool,
                       generator: torch.Generator) -> torch.Tensor:
    """x (N,3,H,W) in [-1,1] plus N(0, sigma/255) on the [0,1] scale, clipped (BasicSR)."""
    n, c, h, w = x.shape
    shape = (n, 1, h, w) if gray else (n, c, h, w)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(x.device)
    return (x + noise * (2.0 * sigma / 255.0)).clamp(-1.0, 1.0)  # 2x: [0,1] -> [-1,1] scale


def add_poisson_noise(x: torch.Tensor, scale: float, *, gray: bool,
                      generator: torch.Generator) -> torch.Tensor:
    """x (N,3,H,W) in [-1,1] plus scaled Poisson (shot) noise, clipped (Real-ESRGAN)."""
    v = ((x + 1.0) / 2.0).clamp(0.0, 1.0).cpu()  # (N,3,H,W) in [0,1]
    if gray:
        v = (0.299 * v[:, 0:1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:3])  # (N,1,H,W)
    counts = torch.poisson(v * POISSON_LEVELS, generator=generator)
    noise = (counts / POISSON_LEVELS - v) * scale  # (N,1|3,H,W) on the [0,1] scale
    return (x + 2.0 * noise.to(x.device)).clamp(-1.0, 1.0)


def apply_noise(x: torch.Tensor, params: dict | None) -> torch.Tensor:
    """Add the noise described by ``params`` (from ``sample_noise_params``) to x (1,3,H,W)."""
    if params is None:
        return x
    g = make_generator(params["seed"])
    if params["kind"] == "gaussian":
        return add_gaussian_noise(x, params["sigma"], gray=params["gray"], generator=g)
    if params["kind"] == "poisson":
        return add_poisson_noise(x, params["scale"], gray=params["gray"], generator=g)
    raise ConfigError(f"noise params: unknown kind {params['kind']!r}")
