"""Low-pass (ILVR) guidance and diffuse-and-guide on a dummy prior with a known answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flipnet.diffusion.guidance import lowpass, make_lowpass_edit, scaled_factor
from flipnet.diffusion.guided_resample import GuidedResampleConfig, guided_resample
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError
from flipnet.models.prior_types import ScheduleConfig


def _dummy_prior(size=32, std=0.5):
    """A 'prior' for data ~ N(0, std^2 I): its exact denoiser E[x0 | x_t] is linear in x_t."""
    sched_cfg = ScheduleConfig(num_timesteps=1000, beta_schedule="cosine", prediction="eps")
    schedule = make_schedule(sched_cfg)

    def model_fn(x, t):
        abar = schedule.alpha_bar(int(t[0]), x)
        x0 = abar.sqrt() * std ** 2 / (abar * std ** 2 + 1 - abar) * x
        return schedule.predict_eps(x, int(t[0]), x0)

    return SimpleNamespace(schedule=sched_cfg, image_size=size, model_fn=model_fn, factor=1,
                           clip_x0=True, encode=lambda x: x, decode=lambda z: z)  # a pixel prior


def test_lowpass_keeps_flat_and_removes_detail():
    flat = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(lowpass(flat, 4), flat, atol=1e-5, rtol=0)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1
    x = checker.expand(1, 3, 32, 32).float()
    assert lowpass(x, 4).abs().mean() < 0.05 * x.abs().mean()
    assert scaled_factor(16, 512, 64) == 2 and scaled_factor(16, 512, 16) == 1


def test_edit_respects_tau_and_clean_step():
    schedule = make_schedule(ScheduleConfig(num_timesteps=100, beta_schedule="linear",
                                            prediction="eps"))
    ref = torch.ones(1, 3, 16, 16)
    ts = [90, 70, 50, 30, 10]
    edit = make_lowpass_edit(ref, schedule, ts, factor=4, tau=2,
                             generator=torch.Generator().manual_seed(0))
    x = torch.zeros(1, 3, 16, 16)
    assert not torch.equal(edit(x, 0, 70), x)  # 4 steps remain > tau: guided
    assert torch.equal(edit(x, 2, 30), x)  # 2 remain: free
    assert torch.equal(edit(x, 4, -1), x)  # the clean step is never edited


def test_guidance_pulls_low_frequencies_to_the_reference():
    size = 32
    ref = torch.zeros(2, 3, size, size)
    ref[:, :, : size // 2] = 0.8  # bright top half: a low-frequency pattern
    prior = _dummy_prior(size)
    free = guided_resample(prior, ref, GuidedResampleConfig(respaced_steps=50, t0=49, tau=49))
    guided = guided_resample(prior, ref, GuidedResampleConfig(respaced_steps=50, t0=49, tau=0,
                                                              factor=4))
    lp_err = (lowpass(guided, 4) - lowpass(ref, 4)).abs().mean()
    assert lp_err < 0.1 * (lowpass(free, 4) - lowpass(ref, 4)).abs().mean()


def test_guided_resample_is_seeded_per_image_and_resizes():
    prior = _dummy_prior(16)
    y = torch.rand(3, 3, 32, 32) * 2 - 1
    cfg = GuidedResampleConfig(respaced_steps=20, t0=10, tau=4, seed=5)
    a = guided_resample(prior, y, cfg)
    assert a.shape == y.shape
    b = guided_resample(prior, y[1:2], cfg, first_index=1)
    torch.testing.assert_close(a[1:2], b, atol=1e-5, rtol=0)


def test_keep_reference_detail_replaces_only_the_priors_band():
    import torch.nn.functional as F

    prior = _dummy_prior(16)
    y = torch.rand(2, 3, 32, 32) * 1.6 - 0.8
    cfg = GuidedResampleConfig(respaced_steps=20, t0=10, tau=4, seed=1, keep_reference_detail=True)
    out = guided_resample(prior, y, cfg)
    ys = F.interpolate(y, size=(16, 16), mode="bicubic", antialias=True,
                       align_corners=False).clamp(-1, 1)
    small = guided_resample(prior, ys, cfg)  # the same sampling, at the prior's size
    expected = (y + F.interpolate(small - ys, size=(32, 32), mode="bicubic",
                                  align_corners=False)).clamp(-1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    plain = guided_resample(prior, y, GuidedResampleConfig(respaced_steps=20, t0=10, tau=4, seed=1))
    # plain upsampling loses y's finest detail; keeping it leaves out closer to y at full size
    assert (out - y).abs().mean() < (plain - y).abs().mean()


def test_config_validation():
    with pytest.raises(ConfigError, match="t0"):
        GuidedResampleConfig(respaced_steps=250, t0=300)
    with pytest.raises(ConfigError, match="tau"):
        GuidedResampleConfig(t0=50, tau=60)
