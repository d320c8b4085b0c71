"""Synthetic degradations: configs, determinism, ranges, stage behaviour, degrade_folder."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flipnet.config import load_config, save_config
from flipnet.degradations.color import ColorConfig, apply_color, sample_color_params
from flipnet.degradations.jpeg import jpeg_compress
from flipnet.degradations.kernels import BlurConfig, blur, gaussian_kernel
from flipnet.degradations.noise import (
    add_gaussian_noise,
    add_poisson_noise,
    make_generator,
)
from flipnet.degradations.pipeline import (
    DegradationConfig,
    apply_params,
    degrade,
    degrade_images,
    sample_params,
)
from flipnet.degradations.presets import (
    PRESETS,
    get_preset,
    preset_for_size,
    raw_preset,
    scale_to_face,
)
from flipnet.degradations.resize import ResizeConfig
from flipnet.errors import ConfigError, OutputPathError
from flipnet.io import load_image, save_image, to_tensor
from flipnet.pipelines.degrade import DegradeConfig, degrade_folder

RANGES = {  # published ranges: blur sigma, downsample r, noise sigma (0-255), JPEG quality
    "gfpgan": ((0.1, 10), (0.8, 8), (0, 20), (60, 100)),
    "codeformer": ((1, 15), (4, 30), (0, 20), (30, 80)),
    "difface": ((0.1, 15), (0.8, 32), (0, 20), (30, 100)),
}


@pytest.fixture(scope="module")
def faces(astronaut) -> torch.Tensor:
    """Four 64x64 crops of the astronaut photo, (4,3,64,64) in [-1,1]."""
    x = F.interpolate(to_tensor(astronaut), size=(128, 128), mode="bilinear", antialias=True)
    return torch.cat([x[..., :64, :64], x[..., :64, 64:], x[..., 64:, :64], x[..., 64:, 64:]])


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_config_round_trips_through_json(name, tmp_path):
    cfg = get_preset(name)
    back = load_config(DegradationConfig, save_config(cfg, tmp_path / "deg.json"))
    assert back == cfg
    assert sample_params(back, 7) == sample_params(cfg, 7)


def test_unknown_preset_and_bad_ranges_raise_config_errors():
    with pytest.raises(ConfigError, match="gfpgan"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="blur.sigma"):
        BlurConfig(sigma=(5.0, 1.0))
    with pytest.raises(ConfigError, match="kernel_size"):
        BlurConfig(kernel_size=40)
    with pytest.raises(ConfigError, match="resize.down_modes"):
        ResizeConfig(down_modes=("lanczos",))


@pytest.mark.parametrize("name", ["gfpgan", "raw"])
def test_output_shape_dtype_range_and_8bit_levels(name, faces):
    lq, params = degrade(faces, get_preset(name), generator=torch.Generator().manual_seed(0))
    assert lq.shape == faces.shape and lq.dtype == torch.float32
    assert lq.min() >= -1 and lq.max() <= 1
    levels = (lq + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert len(params) == 4 and json.loads(json.dumps(params)) == params
    assert not torch.allclose(lq, faces, atol=0.02)


def test_same_seed_same_output_other_seed_differs(faces):
    cfg = get_preset("gfpgan")
    a, pa = degrade(faces, cfg, generator=torch.Generator().manual_seed(3))
    b, pb = degrade(faces, cfg, generator=torch.Generator().manual_seed(3))
    c, pc = degrade(faces, cfg, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c) and pa != pc


def test_image_does_not_depend_on_batch_size_or_neighbours(faces):
    cfg = get_preset("difface")
    full, _ = degrade_images(faces, cfg, seed=10)
    single, _ = degrade_images(faces[2:3], cfg, seed=10, start=2)
    assert torch.equal(full[2:3], single)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    two, _ = degrade(faces[:2], cfg, generator=g1)
    four, _ = degrade(faces, cfg, generator=g2)
    assert torch.equal(two, four[:2])


@pytest.mark.parametrize("name", ["gfpgan", "codeformer", "raw"])
def test_apply_params_remakes_the_same_lq_after_json(name, faces):
    lq, params = degrade(faces, get_preset(name), generator=torch.Generator().manual_seed(1))
    again = apply_params(faces, json.loads(json.dumps(params)))
    assert torch.equal(lq, again)


def test_turning_a_stage_off_keeps_the_other_stages_draws():
    cfg = get_preset("gfpgan")
    no_blur = dataclasses.replace(cfg, blur=None)
    a, b = sample_params(cfg, 11), sample_params(no_blur, 11)
    assert b["blur"] is None and a["blur"] is not None
    assert a["noise"] == b["noise"] and a["jpeg"] == b["jpeg"] and a["resize"] == b["resize"]


@pytest.mark.parametrize("name", list(RANGES))
def test_sampled_params_stay_in_the_published_ranges(name):
    (s0, s1), (r0, r1), (n0, n1), (q0, q1) = RANGES[name]
    draws = [sample_params(get_preset(name), seed) for seed in range(200)]
    sig = [v for p in draws for v in (p["blur"]["sigma_x"], p["blur"]["sigma_y"])]
    assert s0 <= min(sig) and max(sig) <= s1 and max(sig) - min(sig) > 0.8 * (s1 - s0)
    assert {p["blur"]["kernel"] for p in draws} == {"iso", "aniso"}
    assert all(p["blur"]["kernel_size"] == 41 for p in draws)
    iso = [p["blur"] for p in draws if p["blur"]["kernel"] == "iso"]
    assert all(b["sigma_x"] == b["sigma_y"] and b["theta"] == 0 for b in iso)
    assert 60 < len(iso) < 140  # kernel_prob 0.5 / 0.5
    scales = [p["resize"]["scale"] for p in draws]
    assert r0 <= min(scales) and max(scales) <= r1
    noise = [p["noise"]["sigma"] for p in draws]
    assert n0 <= min(noise) and max(noise) <= n1
    q = [p["jpeg"]["quality"] for p in draws]
    assert all(isinstance(v, int) for v in q) and q0 <= min(q) and max(q) <= q1
    assert len(set(q)) > (q1 - q0) // 2


def test_gfpgan_color_stage_probabilities():
    draws = [sample_params(get_preset("gfpgan"), seed)["color"] for seed in range(400)]
    shifted = sum(1 for c in draws if c and c["shift"] is not None) / 400
    jittered = sum(1 for c in draws if c and c["jitter"] is not None) / 400
    assert 0.22 < shifted < 0.38 and 0.22 < jittered < 0.38  # both p = 0.3
    assert all(abs(v) <= 20 for c in draws if c and c["shift"] for v in c["shift"])
    assert sample_params(get_preset("codeformer"), 0)["color"] is None


def test_kernels_sum_to_one_and_anisotropy_follows_sigmas():
    iso = gaussian_kernel(2.0, 2.0, 0.0, 21)
    aniso = gaussian_kernel(4.0, 1.0, 0.0, 41)
    assert math.isclose(iso.sum().item(), 1.0, rel_tol=1e-5)
    assert math.isclose(aniso.sum().item(), 1.0, rel_tol=1e-5)
    assert torch.allclose(iso, iso.T, atol=1e-7)
    ax = torch.arange(41.0) - 20
    var_x = (aniso.sum(0) * ax**2).sum()  # along columns
    var_y = (aniso.sum(1) * ax**2).sum()  # along rows
    assert var_x / var_y == pytest.approx(16.0, rel=0.05)
    turned = gaussian_kernel(4.0, 1.0, math.pi / 2, 41)
    assert torch.allclose(turned, aniso.T, atol=1e-6)


def test_blur_keeps_flat_images_flat_and_smooths_edges():
    flat = torch.full((2, 3, 24, 24), 0.3)
    k = torch.stack([gaussian_kernel(3.0, 3.0, 0.0, 21), gaussian_kernel(5.0, 1.0, 0.7, 21)])
    assert torch.allclose(blur(flat, k), flat, atol=1e-5)
    edge = torch.zeros(1, 3, 32, 32)
    edge[..., 16:] = 1.0
    out = blur(edge, k[:1])
    assert 0.2 < out[0, 0, 5, 16].item() < 0.8 and out[0, 0, 5, 0].item() < 0.05
    tiny = blur(torch.rand(1, 3, 5, 5), k[:1])  # smaller than the kernel: replicate padding
    assert tiny.shape == (1, 3, 5, 5)


def _blockiness(x: torch.Tensor) -> float:
    """Mean jump across 8-pixel column boundaries over the mean jump inside blocks."""
    d = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))  # (W-1,) between col j and j+1
    at = d[7::8]
    inside = torch.cat([d[j::8] for j in range(7)])
    return (at.mean() / inside.mean()).item()


def test_low_jpeg_quality_is_blocky_and_further_from_the_input(faces):
    smooth = F.avg_pool2d(faces, 3, 1, 1)
    q10, q95 = jpeg_compress(smooth, 10), jpeg_compress(smooth, 95)
    assert (q10 - smooth).abs().mean() > 3 * (q95 - smooth).abs().mean()
    assert _blockiness(q10) > 1.3 and _blockiness(q10) > _blockiness(q95)
    assert torch.equal(jpeg_compress(smooth, 30), jpeg_compress(smooth, 30))


@pytest.mark.parametrize("sigma", [5.0, 15.0])
def test_gaussian_noise_std_matches_the_requested_level(sigma):
    x = torch.zeros(1, 3, 128, 128)
    noisy = add_gaussian_noise(x, sigma, gray=False, generator=make_generator(0))
    assert (noisy - x).std().item() == pytest.approx(2 * sigma / 255, rel=0.03)
    gray = add_gaussian_noise(x, sigma, gray=True, generator=make_generator(0))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_poisson_noise_variance_follows_intensity():
    x = torch.zeros(1, 3, 128, 128)  # 0.5 on the [0, 1] scale
    noisy = add_poisson_noise(x, 2.0, gray=False, generator=make_generator(0))
    expected = 2.0 * math.sqrt(0.5 / 256) * 2  # scale * sqrt(v / 256), times 2 for [-1, 1]
    assert (noisy - x).std().item() == pytest.approx(expected, rel=0.05)
    dark = add_poisson_noise(torch.full((1, 3, 128, 128), -0.9), 2.0, gray=False,
                             generator=make_generator(0))
    assert (dark + 0.9).std() < (noisy - x).std()


def test_color_stage_gray_and_shift():
    x = torch.rand(1, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    gray = apply_color(x, {"shift": None, "gray": True, "jitter": None})
    assert torch.allclose(gray[:, 0], gray[:, 2])
    shifted = apply_color(torch.zeros(1, 3, 4, 4), {"shift": [10.0, 0.0, -10.0], "gray": False,
                                                     "jitter": None})
    assert shifted[0, :, 0, 0].tolist() == pytest.approx([20 / 255, 0.0, -20 / 255], abs=1e-6)
    p = sample_color_params(ColorConfig(jitter_prob=1.0), make_generator(1))
    assert sorted(p["jitter"]["order"]) == ["brightness", "contrast", "hue", "saturation"]
    assert apply_color(x, p).shape == x.shape


def test_presets_scale_sigma_and_r_with_face_size():
    published = get_preset("codeformer")
    at128 = preset_for_size("codeformer", 128)
    assert at128.blur.kernel_size == 11 and at128.blur.sigma == pytest.approx((0.25, 3.75))
    assert at128.resize.scale == pytest.approx((1.0, 7.5)) and at128.resize.min_scale == 1.0
    assert at128.noise == published.noise and at128.jpeg == published.jpeg
    assert preset_for_size("codeformer", 512) == published  # 512 px: the published ranges
    # each drawn r at 128 px is the 512 px draw times 1/4, floored at 1
    for seed in range(40):
        r512 = sample_params(published, seed)["resize"]["scale"]
        r128 = sample_params(at128, seed)["resize"]["scale"]
        assert r128 == pytest.approx(max(1.0, r512 / 4))
    gfp = preset_for_size("gfpgan", 128)  # r in [0.8, 8] -> [0.2, 2], never enlarging
    assert min(sample_params(gfp, s)["resize"]["scale"] for s in range(40)) == 1.0


def test_unscaled_presets_keep_the_published_ranges():
    cfg = preset_for_size("gfpgan-unscaled", 128)
    assert cfg.blur == get_preset("gfpgan").blur and cfg.resize == get_preset("gfpgan").resize
    with pytest.raises(ConfigError, match="unscaled"):
        get_preset("gfpgan-512")


def test_scaled_preset_keeps_the_information_of_a_512_pair():
    """A 128 px face degraded with the scaled preset is close to the 512 px degradation shrunk
    to 128 px; the unscaled one (r as published) is much blurrier."""
    g = torch.Generator().manual_seed(0)
    hq512 = F.interpolate(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, size=512,
                          mode="bicubic").clamp(-1, 1)
    hq128 = F.interpolate(hq512, size=128, mode="area")
    base = dataclasses.replace(get_preset("codeformer"), noise=None, jpeg=None)
    errs = {"scaled": [], "unscaled": []}
    for seed in range(6):
        ref = F.interpolate(degrade_images(hq512, base, seed=seed)[0], size=128, mode="area")
        for name, cfg in (("scaled", scale_to_face(base, 128)), ("unscaled", base)):
            errs[name].append(float((degrade_images(hq128, cfg, seed=seed)[0] - ref).abs().mean()))
    assert np.mean(errs["scaled"]) < 0.5 * np.mean(errs["unscaled"])


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        degrade(torch.zeros(3, 8, 8), get_preset("gfpgan"), generator=make_generator(0))
    with pytest.raises(ValueError, match="params"):
        apply_params(torch.zeros(2, 3, 8, 8), [sample_params(get_preset("gfpgan"), 0)])


# ---------------------------------------------------------------- degrade_folder


def _make_folder(root, astronaut):
    src = root / "src"
    save_image(src / "a.png", astronaut[:64, :64])
    save_image(src / "b.jpg", astronaut[100:164, 200:264])
    save_image(src / "sub" / "c.png", astronaut[300:364, 150:214])
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return src


def test_degrade_folder_writes_pngs_params_and_skips_corrupt(tmp_path, astronaut):
    src, dst = _make_folder(tmp_path, astronaut), tmp_path / "lq"
    with pytest.warns(UserWarning, match="broken.png"):
        report = degrade_folder(src, dst, preset="codeformer", seed=5, batch_size=2,
                                progress=False)
    assert report.written == 3 and report.existing == 0 and len(report.skipped) == 1
    for name in ("a.png", "b.png", "sub/c.png"):
        assert load_image(dst / name).rgb.shape == (64, 64, 3)
    meta = json.loads((dst / "params.json").read_text())
    assert meta["preset"] == "codeformer" and meta["seed"] == 5
    assert sorted(meta["files"]) == ["a.png", "b.jpg", "sub/c.png"]
    # the sorted index decides the seed: a.png 0, b.jpg 1, broken.png 2, sub/c.png 3
    assert meta["files"]["sub/c.png"]["params"]["seed"] == 5 + 3
    # params.json re-makes the LQ exactly
    entry = meta["files"]["b.jpg"]
    hq = to_tensor(load_image(src / "b.jpg").rgb)
    again = apply_params(hq, [entry["params"]])
    assert np.array_equal(load_image(dst / entry["output"]).rgb,
                          ((again[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())


def test_degrade_folder_resumes_identically_and_checks_settings(tmp_path, astronaut):
    src, dst = _make_folder(tmp_path, astronaut), tmp_path / "lq"
    with pytest.warns(UserWarning):
        degrade_folder(src, dst, preset="gfpgan", seed=1, size=32, progress=False)
    first = (dst / "sub" / "c.png").read_bytes()
    params_before = (dst / "params.json").read_text()
    (dst / "sub" / "c.png").unlink()
    with pytest.warns(UserWarning):
        report = degrade_folder(src, dst, preset="gfpgan", seed=1, size=32, batch_size=1,
                                progress=False)
    assert report.written == 1 and report.existing == 2
    assert (dst / "sub" / "c.png").read_bytes() == first
    assert (dst / "params.json").read_text() == params_before
    assert load_image(dst / "a.png").rgb.shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="seed"):
        degrade_folder(src, dst, preset="gfpgan", seed=2, size=32, progress=False)


def test_degrade_folder_refuses_to_write_into_the_source(tmp_path, astronaut):
    src = _make_folder(tmp_path, astronaut)
    with pytest.raises(OutputPathError, match="input folder"):
        degrade_folder(src, src, progress=False)
    with pytest.raises(OutputPathError):
        degrade_folder(src, src / "lq", progress=False)


def test_degrade_config_defaults_match_degrade_folder():
    cfg = DegradeConfig()
    assert (cfg.preset, cfg.seed, cfg.size, cfg.batch_size) == ("gfpgan", 0, None, 32)
    assert all(f.metadata.get("help") for f in cfg.__dataclass_fields__.values())


def test_raw_preset_takes_iso():
    assert raw_preset(iso=800).raw.iso == (800.0, 800.0)
    assert get_preset("raw").raw.iso == (3200.0, 3200.0)
