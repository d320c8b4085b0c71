"""Discrete variance-preserving noise schedules and the model parameterisations on top of them.

Notation (DDPM, Ho et al. 2020): ``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` for ``t = 0..N-1`` and
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (DDPM eq. 4). ``t = -1`` stands for the
clean image (``alpha_bar = 1``), which is where every sampler ends.

Parameterisations: ``eps`` (DDPM), ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (Salimans &
Ho 2022, sec. 4) and ``x0``. flipnet's own priors use **v-prediction on the cosine schedule with
1000 steps**: at 64/128 px the cosine schedule (improved DDPM eq. 17) keeps more steps at useful
noise levels than the linear one, and v keeps the regression target at unit scale at both ends,
where eps-prediction makes x0 ill-conditioned near t = N-1. Public eps/linear priors (DifFace,
guided-diffusion) load with their own settings.
"""

from __future__ import annotations

import math

import torch

from flipnet.errors import ConfigError

PREDICTIONS = ("eps", "v", "x0")


def get_linear_betas(num_timesteps: int, *, beta_start: float | None = None,
                     beta_end: float | None = None) -> torch.Tensor:
    """Linear betas (DDPM sec. 4): 1e-4..0.02 at 1000 steps, scaled by 1000/N as in improved DDPM."""
    scale = 1000.0 / num_timesteps
    start = beta_start if beta_start is not None else scale * 1e-4
    end = beta_end if beta_end is not None else scale * 0.02
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def get_cosine_betas(num_timesteps: int, *, s: float = 0.008,
                     max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (improved DDPM, Nichol & Dhariwal 2021, eq. 17), betas clipped at 0.999."""

    def f(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


class NoiseSchedule:
    """alpha_bar_t of a trained schedule plus conversions between x0, eps, v and x_t."""

    def __init__(self, betas: torch.Tensor, *, prediction: str = "eps"):
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() == 0 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ConfigError("noise schedule: betas must be a non-empty list in (0, 1]")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"noise schedule: prediction {prediction!r} not in {PREDICTIONS}")
        self.betas = betas
        self.prediction = prediction
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # (N,) float64
        self._abar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])

    @property
    def num_timesteps(self) -> int:
        """Number of trained timesteps N."""
        return self.betas.numel()

    def alpha_bar(self, t, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer timesteps ``t`` (int or (B,); -1 = clean), shaped (B, 1, 1, 1) like ``like``."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if t.ndim == 0:
            t = t.expand(like.shape[0])
        if bool((t < -1).any()) or bool((t >= self.num_timesteps).any()):
            raise ValueError(f"timestep out of range [-1, {self.num_timesteps - 1}]: {t.tolist()}")
        abar = self._abar_ext[t + 1]
        return abar.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse clean images to step t: sqrt(abar) x0 + sqrt(1 - abar) noise (DDPM eq. 4)."""
        abar = self.alpha_bar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_x0(self, xt: torch.Tensor, t, model_out: torch.Tensor) -> torch.Tensor:
        """x0 from the model output: eps (DDPM eq. 15), v (Salimans & Ho eq. 9 rearranged) or x0."""
        abar = self.alpha_bar(t, xt)
        if self.prediction == "eps":
            return (xt - (1 - abar).sqrt() * model_out) / abar.sqrt()
        if self.prediction == "v":
            return abar.sqrt() * xt - (1 - abar).sqrt() * model_out
        return model_out

    def predict_eps(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """eps implied by x_t and an x0 estimate (inverse of ``q_sample``)."""
        abar = self.alpha_bar(t, xt)
        return (xt - abar.sqrt() * x0) / (1 - abar).sqrt()

    def v_target(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, sec. 4)."""
        abar = self.alpha_bar(t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0

    def min_snr_weight(self, t, like: torch.Tensor, *, gamma: float = 5.0) -> torch.Tensor:
        """Min-SNR-gamma loss weight for this parameterisation (Hang et al. 2023, eq. 7-9).

        SNR = abar / (1 - abar); the weight on an x0 loss would be min(SNR, gamma), which is
        min(SNR, gamma) / SNR on an eps loss and min(SNR, gamma) / (SNR + 1) on a v loss.
        """
        abar = self.alpha_bar(t, like)
        snr = abar / (1 - abar).clamp_min(1e-12)
        clipped = snr.clamp(max=gamma)
        if self.prediction == "eps":
            return clipped / snr.clamp_min(1e-12)
        if self.prediction == "v":
            return clipped / (snr + 1)
        return clipped

    def training_target(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses for this parameterisation (eps, v or x0)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "v":
            return self.v_target(x0, t, noise)
        return x0

    def model_output_from(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        """The model output that would yield ``x0`` at (x_t, t): for closures and tests."""
        if self.prediction == "eps":
            return self.predict_eps(xt, t, x0)
        if self.prediction == "v":
            return self.v_target(x0, t, self.predict_eps(xt, t, x0))
        return x0


def make_schedule(cfg) -> NoiseSchedule:
    """Build the ``NoiseSchedule`` of a ``flipnet.models.prior_types.ScheduleConfig``."""
    if cfg.beta_schedule == "linear":
        betas = get_linear_betas(cfg.num_timesteps, beta_start=cfg.beta_start,
                                 beta_end=cfg.beta_end)
    elif cfg.beta_schedule == "cosine":
        betas = get_cosine_betas(cfg.num_timesteps)
    else:
        raise ConfigError(f"unknown beta_schedule {cfg.beta_schedule!r} (linear | cosine)")
    return NoiseSchedule(betas, prediction=cfg.prediction)
