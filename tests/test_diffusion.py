"""Schedules, respacing and samplers, checked against analytic answers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from flipnet.diffusion.respace import sampling_timesteps, space_timesteps
from flipnet.diffusion.samplers import sample_ddim, sample_ddpm, sample_dpmpp_2m
from flipnet.diffusion.schedules import (
    NoiseSchedule,
    get_cosine_betas,
    get_linear_betas,
)
from flipnet.errors import ConfigError
from flipnet.models.prior_types import ScheduleConfig

MU, SD = 0.3, 0.5  # toy data distribution: every pixel ~ N(MU, SD^2), independent


def gaussian_denoiser(schedule: NoiseSchedule):
    """The exact E[x0 | x_t] for N(MU, SD^2) data, returned in the schedule's parameterisation."""

    def model_fn(x, t):
        abar = schedule.alpha_bar(t, x)
        gain = abar.sqrt() * SD ** 2 / (abar * SD ** 2 + 1 - abar)
        x0 = MU + gain * (x - abar.sqrt() * MU)
        return schedule.model_output_from(x, t, x0)

    return model_fn


def test_cosine_betas_follow_improved_ddpm_eq17():
    n = 1000
    abar = torch.cumprod(1 - get_cosine_betas(n), 0)
    f = [math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2 for t in (1, 100, 500, 900)]
    f0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    for t, ft in zip((1, 100, 500, 900), f):
        assert abar[t - 1].item() == pytest.approx(ft / f0, rel=1e-9)
    lin = get_linear_betas(1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    assert get_linear_betas(250)[-1].item() == pytest.approx(0.08)  # scaled by 1000/N


def test_q_sample_statistics():
    s = NoiseSchedule(get_cosine_betas(1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    for t in (10, 500, 990):
        xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        abar = s.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
        assert xt.std().item() == pytest.approx(math.sqrt(1 - abar), abs=0.02)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_parameterisations_invert(prediction):
    s = NoiseSchedule(get_linear_betas(1000), prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = s.q_sample(x0, t, noise)
    target = s.training_target(x0, t, noise)
    assert torch.allclose(s.predict_x0(xt, t, target), x0, atol=1e-4)
    assert torch.allclose(s.model_output_from(xt, t, x0), target, atol=1e-4)
    if prediction == "v":
        abar = s.alpha_bar(t, x0)
        assert torch.allclose(target, abar.sqrt() * noise - (1 - abar).sqrt() * x0)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weight_equals_clipped_snr_on_x0_error(prediction):
    """Min-SNR-gamma (Hang et al. 2023): in every parameterisation the weighted loss of an output
    error equals min(SNR, gamma) times the squared error of the x0 it implies."""
    s = NoiseSchedule(get_cosine_betas(1000), prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 3, 2, 2, generator=g)
    delta = 0.1 * torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 50, 300, 700, 990])
    x0, noise = x0.double(), noise.double()
    xt = s.q_sample(x0, t, noise)
    out_error = s.model_output_from(xt, t, x0 + delta) - s.model_output_from(xt, t, x0)
    weighted = (s.min_snr_weight(t, xt, gamma=5.0) * out_error ** 2).sum(dim=(1, 2, 3))
    abar = s.alpha_bar(t, xt).flatten()
    snr = abar / (1 - abar)
    expected = snr.clamp(max=5.0) * (delta ** 2).sum(dim=(1, 2, 3))
    assert torch.allclose(weighted, expected, rtol=1e-6)
    assert snr[0] > 5 > snr[-1]  # both sides of the clip are exercised


def test_schedule_config_errors():
    with pytest.raises(ConfigError, match="beta_schedule"):
        ScheduleConfig(beta_schedule="quadratic")
    with pytest.raises(ConfigError, match="prediction"):
        NoiseSchedule(get_linear_betas(100), prediction="score")


def test_space_timesteps_semantics():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    two = space_timesteps(100, "10,5")
    assert len(two) == 15 and two[:10] == [round(i * 49 / 9) for i in range(10)]
    assert two[10:] == [50 + round(i * 49 / 4) for i in range(5)]
    with pytest.raises(ValueError, match="exactly"):
        space_timesteps(1000, "ddim999")


def test_sampling_timesteps_start_at_a_respaced_step():
    kept = space_timesteps(1000, "250")
    ts = sampling_timesteps(1000, "250", start_index=150)
    assert len(ts) == 151 and ts[0] == kept[150] and ts[-1] == 0
    assert all(a > b for a, b in pairwise(ts))


def _cosine(prediction):
    return NoiseSchedule(get_cosine_betas(1000), prediction=prediction)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,steps", [("ddim", "50"), ("dpmpp_2m", "50"),
                                           ("ddpm", "100")])
def test_samplers_recover_gaussian_data(prediction, sampler, steps):
    s = _cosine(prediction)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4000, 1, 1, 1, generator=g)
    ts = sampling_timesteps(1000, steps)
    fn = {"ddim": sample_ddim, "dpmpp_2m": sample_dpmpp_2m, "ddpm": sample_ddpm}[sampler]
    kw = {"generator": g} if sampler == "ddpm" else {}
    out = fn(gaussian_denoiser(s), x, s, ts, clip_x0=False, **kw)
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert out.std().item() == pytest.approx(SD, abs=0.03)


def test_dpmpp_2m_converges_at_second_order_and_ddim_at_first():
    s = _cosine("eps")
    x = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(5))
    x = (x - x.mean()) / x.std()  # exactly standard, so only the solver's error remains

    def err(fn, steps):
        out = fn(gaussian_denoiser(s), x, s, sampling_timesteps(1000, steps), clip_x0=False)
        return abs(out.std().item() - SD)

    # 2.5x more steps: the error shrinks about 2.5x (first order) vs about 6x (second order)
    assert err(sample_dpmpp_2m, "20") / err(sample_dpmpp_2m, "50") > 4.5
    assert 1.8 < err(sample_ddim, "20") / err(sample_ddim, "50") < 3.5


def test_ddim_from_an_intermediate_step_keeps_the_data_distribution():
    s = _cosine("v")
    g = torch.Generator().manual_seed(3)
    x0 = MU + SD * torch.randn(4000, 1, 1, 1, generator=g)
    ts = sampling_timesteps(1000, "250", start_index=150)
    xt = s.q_sample(x0, ts[0], torch.randn(x0.shape, generator=g))
    out = sample_ddim(gaussian_denoiser(s), xt, s, ts, clip_x0=False)
    assert out.mean().item() == pytest.approx(MU, abs=0.03)
    assert out.std().item() == pytest.approx(SD, abs=0.03)
    # deterministic DDIM from t0 keeps each sample close to where it started
    assert (out - x0).abs().mean().item() < SD


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_batch_equals_single_runs_with_per_sample_generators(sampler):
    s = _cosine("eps")
    ts = sampling_timesteps(1000, "20")
    fn, kw = (sample_ddpm, {}) if sampler == "ddpm" else (sample_ddim, {"eta": 1.0})
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    batch = fn(gaussian_denoiser(s), x, s, ts,
               generator=[torch.Generator().manual_seed(10 + i) for i in range(3)], **kw)
    singles = [fn(gaussian_denoiser(s), x[i:i + 1], s, ts,
                  generator=[torch.Generator().manual_seed(10 + i)], **kw) for i in range(3)]
    assert torch.allclose(batch, torch.cat(singles), atol=1e-6)
    again = fn(gaussian_denoiser(s), x, s, ts,
               generator=[torch.Generator().manual_seed(10 + i) for i in range(3)], **kw)
    assert torch.equal(batch, again)
    other = fn(gaussian_denoiser(s), x, s, ts,
               generator=[torch.Generator().manual_seed(99 + i) for i in range(3)], **kw)
    assert not torch.allclose(batch, other)


@pytest.mark.parametrize("fn", [sample_ddpm, sample_ddim, sample_dpmpp_2m])
def test_edit_hook_called_after_every_step(fn):
    s = _cosine("eps")
    ts = sampling_timesteps(1000, "12", start_index=7)
    calls = []

    def edit(x, i, t_next):
        calls.append((i, t_next))
        return torch.zeros_like(x) if t_next == -1 else x

    kw = {"generator": torch.Generator().manual_seed(0)} if fn is sample_ddpm else {}
    out = fn(gaussian_denoiser(s), torch.randn(2, 3, 4, 4), s, ts, edit=edit, **kw)
    assert calls == list(zip(range(len(ts)), ts[1:] + [-1]))
    assert torch.count_nonzero(out) == 0  # the hook's result is what the sampler continues with


def test_sampler_input_errors():
    s = _cosine("eps")
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="generator"):
        sample_ddpm(gaussian_denoiser(s), x, s, [500, 0])
    with pytest.raises(ValueError, match="decreasing"):
        sample_ddim(gaussian_denoiser(s), x, s, [0, 500])
    with pytest.raises(ValueError, match="2 generators"):
        sample_ddpm(gaussian_denoiser(s), x, s, [500, 0],
                    generator=[torch.Generator(), torch.Generator()])
