"""Latent priors (issue 18): an autoencoder + a denoiser + a schedule, used wherever a pixel prior
is (sampling, individual PNGs, DifFace-style restore, pseudo targets), and latent ILVR guidance."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny_flipnet import one_thread  # noqa: F401 (fixture)
from torch import nn

from flipnet.diffusion.guidance import latent_factor, lowpass
from flipnet.diffusion.guided_resample import GuidedResampleConfig, guided_resample
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError, OutputPathError
from flipnet.io import list_images, load_image, save_image
from flipnet.models.autoencoder import AutoencoderConfig, FaceAutoencoder
from flipnet.models.prior import load_prior, save_prior
from flipnet.models.prior_types import Prior, PriorConfig, ScheduleConfig
from flipnet.models.unet import UNet, UNetConfig
from flipnet.pipelines.prior_restore import PriorMethod, prior_resample
from flipnet.pipelines.sample import check_sample_folder, sample_prior, save_samples

# a 16 px latent prior: f = 2, (4, 8, 8) latents
TINY_AE = AutoencoderConfig(image_size=16, latent_channels=4, block_out_channels=(8, 8),
                            mid_blocks=0, norm_num_groups=4, latent_shift=(0.1, -0.2, 0.0, 0.3),
                            latent_scale=(2.0, 0.5, 1.0, 1.5))
TINY_LATENT = PriorConfig(
    unet=UNetConfig(image_size=8, in_channels=4, out_channels=4, model_channels=16,
                    channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
                    norm_groups=8),
    schedule=ScheduleConfig(num_timesteps=100, beta_schedule="cosine", prediction="v"))


def _fp16_exact(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights that survive the fp16 save unchanged (so a reload gives equal outputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.1).half().float())
    return module.eval()


def _latent_parts():
    return _fp16_exact(UNet(TINY_LATENT.unet), 1), _fp16_exact(FaceAutoencoder(TINY_AE), 2)


@pytest.fixture(scope="module")
def latent_folder(tmp_path_factory):
    unet, ae = _latent_parts()
    return save_prior(tmp_path_factory.mktemp("latent") / "prior", unet, TINY_LATENT,
                      autoencoder=ae)


class UnshuffleAutoencoder(nn.Module):
    """An exact invertible stand-in with FaceAutoencoder's API: latents = pixel_unshuffle(x, f)
    (3 f^2 channels, one latent pixel = one f x f image patch), decode = pixel_shuffle. A
    random-init FaceAutoencoder's decoder would make 'low frequencies of the decoded image' say
    nothing about guidance, so the ILVR property is tested through this one."""

    def __init__(self, factor: int = 4, image_size: int = 32):
        super().__init__()
        self.config = SimpleNamespace(factor=factor, latent_channels=3 * factor ** 2,
                                      image_size=image_size)
        self.decoded: list[torch.Tensor] = []  # what decode was given (to see latents unclipped)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.config.factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.decoded.append(z)
        return F.pixel_shuffle(z, self.config.factor).clamp(-1, 1)


class GaussianDenoiser(nn.Module):
    """The exact eps-denoiser for data ~ N(mean, std^2 I): E[x0 | x_t] is linear in x_t."""

    def __init__(self, schedule, *, std: float = 0.5, mean: float = 0.0):
        super().__init__()
        self.schedule, self.std, self.mean = schedule, std, mean

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = int(t[0])
        abar = self.schedule.alpha_bar(t0, x)
        gain = abar.sqrt() * self.std ** 2 / (abar * self.std ** 2 + 1 - abar)
        x0 = self.mean + gain * (x - abar.sqrt() * self.mean)
        return self.schedule.predict_eps(x, t0, x0)


def _gaussian_latent_prior(*, size: int = 32, factor: int = 4, std: float = 0.5,
                           mean: float = 0.0) -> Prior:
    sched = ScheduleConfig(num_timesteps=1000, beta_schedule="cosine", prediction="eps")
    return Prior(GaussianDenoiser(make_schedule(sched), std=std, mean=mean), sched, None,
                 "flipnet", size, "test", autoencoder=UnshuffleAutoencoder(factor, size))


def test_latent_prior_folder_round_trip(latent_folder, tmp_path):
    prior = load_prior(latent_folder)
    assert (latent_folder / "autoencoder" / "config.json").is_file()
    assert prior.autoencoder is not None and prior.autoencoder.config == TINY_AE
    assert prior.image_size == 16 and prior.factor == 2 and prior.latent_shape == (4, 8, 8)
    assert not prior.clip_x0
    unet, ae = _latent_parts()
    fresh = Prior(unet, TINY_LATENT.schedule, TINY_LATENT, "flipnet", 16, autoencoder=ae)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = prior.encode(x)
    assert z.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z, fresh.encode(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.decode(z), fresh.decode(z), atol=1e-5, rtol=0)
    t = torch.full((2,), 50)
    torch.testing.assert_close(prior.model_fn(z, t), fresh.model_fn(z, t), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(sample_prior(prior, n=2, steps=2, progress=False),
                                  sample_prior(fresh, n=2, steps=2, progress=False))
    # a pixel prior saved over it drops autoencoder/ and is a pixel prior again
    pixel_cfg = dataclasses.replace(TINY_LATENT, unet=dataclasses.replace(
        TINY_LATENT.unet, in_channels=3, out_channels=3))
    folder = tmp_path / "p"
    save_prior(folder, unet, TINY_LATENT, autoencoder=(ae, TINY_AE))  # the (module, cfg) form
    assert load_prior(folder).autoencoder is not None
    save_prior(folder, UNet(pixel_cfg.unet), pixel_cfg)
    pixel = load_prior(folder)
    assert not (folder / "autoencoder").exists() and pixel.autoencoder is None
    assert pixel.image_size == 8 and pixel.factor == 1 and pixel.latent_shape == (3, 8, 8)
    assert pixel.clip_x0 and pixel.encode(x) is x and pixel.decode(x) is x
    with pytest.raises(ConfigError, match="latent_channels"):
        save_prior(tmp_path / "bad", UNet(pixel_cfg.unet), pixel_cfg, autoencoder=ae)


def test_latent_sampling_shapes_batching_and_no_latent_clipping(latent_folder):
    one = sample_prior(latent_folder, n=3, steps=2, batch_size=1, progress=False)
    three = sample_prior(latent_folder, n=3, steps=2, batch_size=3, progress=False)
    assert one.shape == (3, 16, 16, 3) and one.dtype == np.uint8  # pixels, from (4, 8, 8) noise
    np.testing.assert_array_equal(one, three)
    # normalized latents are not clipped to [-1, 1] the way pixel x0 is
    prior = _gaussian_latent_prior(size=8, factor=2, std=0.2, mean=2.0)
    assert sample_prior(prior, n=1, steps=3, progress=False).shape == (1, 8, 8, 3)
    assert prior.autoencoder.decoded[-1].mean() > 1.5


def test_individual_pngs_and_the_cli(latent_folder, tmp_path):
    from flipnet.cli import cli

    images = sample_prior(latent_folder, n=2, steps=2, progress=False)
    files = save_samples(tmp_path / "one", images, first_index=5)
    assert [f.name for f in files] == ["00005.png", "00006.png"]
    np.testing.assert_array_equal(load_image(files[1]).rgb, images[1])
    for bad in (latent_folder, latent_folder / "samples"):
        with pytest.raises(OutputPathError, match="weights folder"):
            check_sample_folder(bad, latent_folder)
    r = CliRunner().invoke(cli, ["sample", "--weights", str(latent_folder), "--n", "2",
                                 "--steps", "2", "--device", "cpu", "-o",
                                 str(tmp_path / "grid.png"), "--individual",
                                 str(tmp_path / "faces")])
    assert r.exit_code == 0, r.output
    assert [p.name for p in list_images(tmp_path / "faces")] == ["00000.png", "00001.png"]
    np.testing.assert_array_equal(load_image(tmp_path / "faces" / "00001.png").rgb, images[1])
    assert (tmp_path / "grid.png").is_file()
    r = CliRunner().invoke(cli, ["sample", "--weights", str(latent_folder), "--n", "1",
                                 "--individual", str(latent_folder / "x")])
    assert r.exit_code != 0 and not (latent_folder / "x").exists()


def test_prior_method_on_a_latent_prior_returns_pixel_faces(latent_folder):
    method = PriorMethod(latent_folder, steps=10, batch_size=2, seed=3)
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = method.restore(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    method.batch_size = 1  # image i's noise depends on (seed, i), not on the batching
    np.testing.assert_array_equal(method.restore(crops), out)
    # at the prior's own size too, with the reference's detail kept above the prior's band
    y = torch.from_numpy(crops[:2, :16, :16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    cfg = dataclasses.replace(method.cfg, keep_reference_detail=True)
    assert prior_resample(method.prior, y, cfg).shape == (2, 3, 16, 16)


def test_pseudo_targets_with_a_latent_prior(latent_folder, tmp_path, astronaut):
    import cv2

    from flipnet.models.restorer import Restorer, RestorerConfig, save_restorer
    from flipnet.pipelines.pseudo_targets import PseudoTargetConfig, make_pseudo_targets

    rcfg = RestorerConfig(image_size=32, width=8, enc_blocks=(1, 1), middle_blocks=1,
                          dec_blocks=(1, 1))
    torch.manual_seed(0)
    save_restorer(tmp_path / "restorer", Restorer(rcfg), rcfg)
    face = cv2.resize(astronaut[20:240, 120:340], (32, 32), interpolation=cv2.INTER_AREA)
    for i, person in enumerate(["Alan_A", "Bob_B"]):
        save_image(tmp_path / "lq" / person / f"{person}_{i}.png", face)
    cfg = PseudoTargetConfig(restorer=str(tmp_path / "restorer"), prior=str(latent_folder),
                             respaced_steps=10, t0=6, tau=2, device="cpu")
    report = make_pseudo_targets(tmp_path / "lq", tmp_path / "out", cfg, progress=False)
    assert report["count"] == 2
    for p in list_images(tmp_path / "out" / "target"):
        assert load_image(p).rgb.shape == (32, 32, 3)


def test_latent_factor_maps_image_factors():
    assert latent_factor(16, 4) == 4 and latent_factor(12, 4) == 3 and latent_factor(8, 8) == 1
    assert latent_factor(2, 4) == 1  # finer than one latent pixel: the nearest is 1
    with pytest.raises(ValueError):
        latent_factor(8, 0)


def test_latent_guidance_keeps_the_references_low_frequencies_in_image_space():
    """Guidance on latents (latent factor k = N / f) keeps lowpass_N of the decoded face near the
    reference's, unlike the same run unguided; it is a low-pass replacement, not a copy: the
    decoded face's high band is the prior's, not the reference's."""
    size, f, n = 32, 4, 8  # image factor 8 = latent factor 2 on 8 x 8 latents
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    smooth = 0.6 * torch.tanh(3 * yy) + 0.2 * xx  # bright/dark halves and a slope
    checker = ((torch.arange(size)[:, None] + torch.arange(size)[None, :]) % 2 * 2 - 1) * 0.15
    ref = (smooth + checker).expand(2, 3, size, size).clone()
    prior = _gaussian_latent_prior(size=size, factor=f)

    def run(**kw):
        cfg = GuidedResampleConfig(respaced_steps=50, t0=49, seed=7, **kw)
        return prior_resample(prior, ref, cfg)

    free, guided = run(tau=49), run(tau=0, factor=n)  # same seed: same noise draws
    too_coarse = run(tau=0, factor=n * f)  # latent factor 8: only the latent mean is guided

    def low_err(x):
        return (lowpass(x, n) - lowpass(ref, n)).abs().mean()

    assert low_err(guided) < 0.2 * low_err(free)
    assert low_err(guided) < 0.5 * low_err(too_coarse)  # the factor is counted in image pixels

    def high(x):
        return x - lowpass(x, n)

    assert (high(guided) - high(ref)).abs().mean() > 0.5 * high(ref).abs().mean()


def test_pixel_priors_take_the_unchanged_path():
    """``prior_resample`` on a pixel prior is ``guided_resample`` itself, bit for bit."""
    sched = ScheduleConfig(num_timesteps=1000, beta_schedule="cosine", prediction="eps")
    prior = Prior(GaussianDenoiser(make_schedule(sched)), sched, None, "flipnet", 16)
    assert prior.latent_shape == (3, 16, 16) and prior.clip_x0
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    cfg = GuidedResampleConfig(respaced_steps=20, t0=10, tau=4, seed=2)
    torch.testing.assert_close(prior_resample(prior, y, cfg, first_index=3),
                               guided_resample(prior, y, cfg, first_index=3), atol=0, rtol=0)


def test_prior_feature_loss_reads_a_latent_prior_through_its_encoder(latent_folder):
    """``finetune``'s default perceptual term (prior features) works on a latent prior."""
    from flipnet.training.losses import PriorFeatureLoss, make_perceptual_loss

    loss = make_perceptual_loss("auto", prior_path=latent_folder)
    assert isinstance(loss, PriorFeatureLoss) and loss.autoencoder is not None
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 16, 16, generator=g)).clamp(-1, 1).requires_grad_()
    assert loss.features(x)[0].shape[-2:] == (8, 8)  # the UNet sees 8 x 8 latents
    assert float(loss(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    value = loss(y, x)
    assert float(value.detach()) > 1e-4
    value.backward()
    assert y.grad.abs().sum() > 0  # the gradient reaches the image through the encoder
    assert all(p.grad is None for p in loss.parameters())  # the prior stays frozen


def test_the_default_prior_is_the_shipped_latent_128_prior(tmp_path):
    """Issue 18: the latent prior is the default of `sample`, `--method prior`, `pseudo-targets`
    and `finetune`, and it makes 128 px faces."""
    from flipnet.cli import cli
    from flipnet.pipelines.pseudo_targets import PseudoTargetConfig
    from flipnet.training.finetune import FinetuneConfig
    from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights

    assert FinetuneConfig().prior == PseudoTargetConfig().prior == DEFAULT_WEIGHTS["prior"]
    prior = load_prior(resolve_weights(DEFAULT_WEIGHTS["prior"]))
    assert prior.image_size == 128 and prior.latent_shape == (4, 32, 32)
    assert prior.autoencoder is not None and not prior.clip_x0
    result = CliRunner().invoke(cli, ["sample", "--n", "2", "--steps", "3", "--batch-size", "2",
                                      "--device", "cpu", "-o", str(tmp_path / "grid.png"),
                                      "--individual", str(tmp_path / "faces")])
    assert result.exit_code == 0, result.output
    faces = [load_image(p).rgb for p in list_images(tmp_path / "faces")]
    assert [f.shape for f in faces] == [(128, 128, 3)] * 2
    assert np.abs(faces[0].astype(int) - faces[1].astype(int)).mean() > 5  # two different faces


class PoolAutoencoder(UnshuffleAutoencoder):
    """A lossy stand-in: latents = f x f average pools, decode = nearest up-sampling, so
    decode(encode(y)) loses all detail finer than f pixels."""

    def __init__(self, factor: int = 4, image_size: int = 32):
        super().__init__(factor, image_size)
        self.config.latent_channels = 3

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.config.factor)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=self.config.factor, mode="nearest")


def test_keep_reference_detail_on_a_latent_prior_keeps_what_the_autoencoder_loses():
    """Pseudo targets on a latent prior: the prior edits decode(encode(y)) and the detail the
    autoencoder cannot represent, y - decode(encode(y)), stays the reference's."""
    sched = ScheduleConfig(num_timesteps=1000, beta_schedule="cosine", prediction="eps")
    prior = Prior(GaussianDenoiser(make_schedule(sched), std=0.2), sched, None, "flipnet", 32,
                  "test", autoencoder=PoolAutoencoder(4, 32))
    y = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) - 0.5) * 0.6
    cfg = GuidedResampleConfig(respaced_steps=20, t0=10, tau=4, seed=1)
    plain = guided_resample(prior, y, cfg)
    keep = guided_resample(prior, y, dataclasses.replace(cfg, keep_reference_detail=True))
    lost = y - prior.decode(prior.encode(y))
    assert lost.abs().mean() > 0.05  # the autoencoder is lossy: there is detail to keep
    inside = (plain.abs() < 0.999) & (keep.abs() < 0.999)  # away from the final clamp
    assert inside.float().mean() > 0.9
    torch.testing.assert_close((keep - plain)[inside], lost[inside], atol=1e-5, rtol=0)
