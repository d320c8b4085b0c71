"""Samplers: small pure functions ``sample_<solver>(model_fn, x, schedule, timesteps, ...)``.

* ``model_fn(x_t, t) -> model output`` in the schedule's parameterisation; ``t`` is a (B,) long
  tensor of *original* timesteps. Conditioning (FLIPNET streams, guidance) lives in closures
  built by callers, never in sampler flags.
* ``timesteps``: strictly decreasing original timesteps, e.g. from
  ``flipnet.diffusion.respace.sampling_timesteps``. ``x`` is x_t at ``timesteps[0]``, so a run can
  start from an intermediate step (pure noise only when ``timesteps[0]`` is the last step).
* ``edit(x, i, t_next) -> x`` is called after step ``i`` moved x to ``t_next`` (-1 = clean), for
  low-pass (ILVR) replacement and FLIPNET's per-step edits.
* All randomness comes from ``generator``: one ``torch.Generator`` or a list with one per sample;
  with a list, a batch gives each sample exactly what a single run with its generator gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from tqdm.auto import tqdm

from flipnet.diffusion.schedules import NoiseSchedule

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EditFn = Callable[[torch.Tensor, int, int], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator]


def randn_like(x: torch.Tensor, generator: Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` from one generator or one generator per sample."""
    if generator is None:
        raise ValueError("this sampler draws noise: pass generator=torch.Generator().manual_seed(s)")
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device,
                           dtype=torch.float32).to(x.device, x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack([torch.randn(x.shape[1:], generator=g, device=g.device,
                                    dtype=torch.float32) for g in generator]).to(x.device, x.dtype)


def _check(timesteps: Sequence[int], schedule: NoiseSchedule) -> list[int]:
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(a <= b for a, b in pairwise(ts)) or ts[-1] < 0 or ts[0] >= schedule.num_timesteps:
        raise ValueError("timesteps must be strictly decreasing original steps in "
                         f"[0, {schedule.num_timesteps - 1}], e.g. from sampling_timesteps()")
    return ts


def _denoise(model_fn: ModelFn, x: torch.Tensor, t: int, schedule: NoiseSchedule,
             clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) predicted at x_t; x0 clipped to [-1, 1] when asked, eps made consistent with it."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    x0 = schedule.predict_x0(x, t, model_fn(x, t_batch).to(x.dtype))
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    return x0, schedule.predict_eps(x, t, x0)


def _steps(ts: list[int], progress: bool, name: str):
    nxt = ts[1:] + [-1]
    return tqdm(list(enumerate(zip(ts, nxt))), desc=name, disable=not progress, leave=False)


@torch.no_grad()
def sample_ddpm(model_fn: ModelFn, x: torch.Tensor, schedule: NoiseSchedule,
                timesteps: Sequence[int], *, generator: Generator | None = None,
                edit: EditFn | None = None, clip_x0: bool = True, variance: str = "small",
                progress: bool = False) -> torch.Tensor:
    """Ancestral sampling from q(x_s | x_t, x0) (DDPM eq. 6-7) between consecutive kept steps."""
    ts = _check(timesteps, schedule)
    for i, (t, s) in _steps(ts, progress, "ddpm"):
        x0, _ = _denoise(model_fn, x, t, schedule, clip_x0)
        abar_t, abar_s = schedule.alpha_bar(t, x), schedule.alpha_bar(s, x)
        beta = 1 - abar_t / abar_s  # respaced beta between t and s
        mean = (abar_s.sqrt() * beta / (1 - abar_t)) * x0 \
            + ((1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t)) * x
        if s >= 0:
            var = beta * (1 - abar_s) / (1 - abar_t) if variance == "small" else beta
            x = mean + var.sqrt() * randn_like(x, generator)
        else:
            x = mean
        if edit is not None:
            x = edit(x, i, s)
    return x


@torch.no_grad()
def sample_ddim(model_fn: ModelFn, x: torch.Tensor, schedule: NoiseSchedule,
                timesteps: Sequence[int], *, eta: float = 0.0,
                generator: Generator | None = None, edit: EditFn | None = None,
                clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 deterministic, eta = 1 ancestral-like."""
    ts = _check(timesteps, schedule)
    for i, (t, s) in _steps(ts, progress, "ddim"):
        x0, eps = _denoise(model_fn, x, t, schedule, clip_x0)
        abar_t, abar_s = schedule.alpha_bar(t, x), schedule.alpha_bar(s, x)
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
        x = abar_s.sqrt() * x0 + (1 - abar_s - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and s >= 0:
            x = x + sigma * randn_like(x, generator)
        if edit is not None:
            x = edit(x, i, s)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model_fn: ModelFn, x: torch.Tensor, schedule: NoiseSchedule,
                    timesteps: Sequence[int], *, edit: EditFn | None = None,
                    clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep in log-SNR, data prediction."""
    ts = _check(timesteps, schedule)
    x0_prev, h_prev = None, None
    for i, (t, s) in _steps(ts, progress, "dpm++2m"):
        x0, _ = _denoise(model_fn, x, t, schedule, clip_x0)
        abar_t, abar_s = schedule.alpha_bar(t, x), schedule.alpha_bar(s, x)
        if s < 0:  # the last step lands on the clean image: lambda = +inf, x = D
            x = x0
        else:
            lam_t = 0.5 * torch.log(abar_t / (1 - abar_t))  # log(alpha / sigma)
            lam_s = 0.5 * torch.log(abar_s / (1 - abar_s))
            h = lam_s - lam_t
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = ((1 - abar_s) / (1 - abar_t)).sqrt() * x - abar_s.sqrt() * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if edit is not None:
            x = edit(x, i, s)
    return x


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m}
