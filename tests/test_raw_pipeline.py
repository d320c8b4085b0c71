"""Camera RAW degradation (Brooks et al. 2019): ISP round trip, mosaic, noise versus ISO."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flipnet.degradations.noise import make_generator
from flipnet.degradations.pipeline import DegradationConfig, apply_params, degrade_images
from flipnet.degradations.presets import raw_preset
from flipnet.degradations.raw import (
    RawConfig,
    bayer_masks,
    demosaic_bilinear,
    inverse_smoothstep,
    mosaic,
    noise_levels,
    process,
    rgb2cam_matrix,
    sample_raw_params,
    simulate_raw,
    smoothstep,
    unprocess,
)
from flipnet.errors import ConfigError
from flipnet.io import to_tensor


@pytest.fixture(scope="module")
def face(astronaut) -> torch.Tensor:
    """The astronaut's face region at 96x96, (1,3,96,96) in [-1,1]."""
    x = to_tensor(astronaut[40:232, 150:342])
    return F.interpolate(x, size=(96, 96), mode="bilinear", antialias=True)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (((a - b) / 2) ** 2).mean().item()  # on the [0, 1] scale
    return 10 * math.log10(1.0 / mse)


def _camera(iso: float, seed: int = 0) -> dict:
    return sample_raw_params(RawConfig(iso=(iso, iso), read_jitter=0.0), make_generator(seed))


def test_tone_curve_and_colour_matrix_invert_exactly():
    x = torch.linspace(0, 1, 101)
    assert torch.allclose(smoothstep(inverse_smoothstep(x)), x, atol=1e-5)
    m = rgb2cam_matrix([0.2, 0.3, 0.1, 0.4])
    assert torch.allclose(m.sum(1), torch.ones(3, dtype=m.dtype))  # white stays white
    assert torch.allclose(torch.linalg.inv(m) @ m, torch.eye(3, dtype=m.dtype), atol=1e-9)


def test_mosaic_is_rggb_and_demosaic_keeps_flat_colours():
    masks = bayer_masks(4, 4)[0]
    assert masks[0, 0, 0] == 1 and masks[1, 0, 1] == 1 and masks[1, 1, 0] == 1
    assert masks[2, 1, 1] == 1 and masks.sum(0).eq(1).all()
    flat = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1).expand(2, 3, 9, 10)
    bayer = mosaic(flat)
    assert bayer.shape == (2, 1, 9, 10) and bayer[0, 0, 0, 0] == pytest.approx(0.2)
    assert torch.allclose(demosaic_bilinear(bayer), flat, atol=1e-6)


def test_inverse_then_forward_isp_without_noise_is_near_identity(face):
    params = [_camera(0.0, seed) for seed in range(3)]
    x01 = ((face + 1) / 2).expand(3, -1, -1, -1)
    cam = unprocess(x01, params)  # (3,3,H,W) linear camera RGB
    assert cam.mean() < x01.mean()  # linear, darkened by the inverse gains
    # colour pipeline alone (no mosaic): only highlight / out-of-gamut clipping can differ
    back = process(cam, params)
    for i in range(3):
        assert _psnr(back[i:i + 1] * 2 - 1, face) > 40
    # flat colours: mosaic + demosaic are exact, so the whole chain inverts to float precision
    colours = torch.tensor([[0.8, 0.6, 0.5], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    flat = colours.view(3, 3, 1, 1).expand(3, 3, 6, 6) * 2 - 1
    assert (simulate_raw(flat, params) - flat).abs().max() < 2e-3
    # a real face: bilinear demosaic error at edges (about 31 dB on sRGB values), a little
    # amplified by the gains and the tone curve
    demosaic_only = demosaic_bilinear(mosaic(x01[:1])) * 2 - 1
    full = simulate_raw(face.expand(3, -1, -1, -1), params)
    for i in range(3):
        assert _psnr(full[i:i + 1], face) > max(26.0, _psnr(demosaic_only, face) - 4.0)


def test_raw_stage_is_near_identity_through_the_pipeline(face):
    cfg = DegradationConfig(raw=RawConfig(iso=(0.0, 0.0), read_jitter=0.0))
    lq, params = degrade_images(face, cfg, seed=0)
    assert params[0]["raw"]["shot"] == 0 and params[0]["raw"]["read"] == 0
    assert _psnr(lq, face) > 26


def test_noise_levels_follow_the_documented_iso_model():
    shot, read = noise_levels(3200)
    assert shot == pytest.approx(3.2e-3)
    assert math.log(read) == pytest.approx(2.18 * math.log(shot) + 1.20)
    assert noise_levels(100)[0] == pytest.approx(1e-4) and noise_levels(0) == (0.0, 0.0)
    shots, reads = zip(*(noise_levels(iso) for iso in (100, 800, 3200, 12800)))
    assert list(shots) == sorted(shots) and list(reads) == sorted(reads)


def test_noise_grows_with_iso(face):
    clean = simulate_raw(face, [_camera(0.0, 1)])
    errors = []
    for iso in (400, 1600, 6400):
        noisy = simulate_raw(face, [_camera(iso, 1)])  # same camera, only the ISO differs
        errors.append((noisy - clean).std().item())
    assert errors[0] < errors[1] < errors[2]
    assert errors[0] > 1e-3


def test_raw_preset_is_reproducible_and_iso_sensitive(face):
    a, pa = degrade_images(face, raw_preset(iso=3200), seed=4)
    b, _ = degrade_images(face, raw_preset(iso=3200), seed=4)
    c, _ = degrade_images(face, raw_preset(iso=100), seed=4)
    assert torch.equal(a, b) and torch.equal(apply_params(face, pa), a)
    assert pa[0]["raw"]["iso"] == 3200 and pa[0]["resize"]["scale"] >= 1
    assert not torch.equal(a, c)


def test_iso_range_is_sampled_log_uniformly_within_bounds():
    cfg = RawConfig(iso=(100.0, 12800.0))
    isos = [sample_raw_params(cfg, make_generator(s))["iso"] for s in range(200)]
    assert 100 <= min(isos) and max(isos) <= 12800
    below = sum(iso < 1131.4 for iso in isos)  # geometric mean of the range
    assert 70 < below < 130
    with pytest.raises(ConfigError, match="raw.iso"):
        RawConfig(iso=(0.0, 800.0))
