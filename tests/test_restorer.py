"""The fast restorer: shapes, identity at init, folder round trip, discriminator, losses."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from flipnet.errors import ConfigError, WeightsError
from flipnet.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from flipnet.models.prior_types import Prior, PriorConfig, ScheduleConfig
from flipnet.models.restorer import (
    Restorer,
    RestorerConfig,
    count_parameters,
    deepen_restorer,
    interpolate_restorers,
    load_restorer,
    save_restorer,
)
from flipnet.models.unet import UNet, UNetConfig
from flipnet.training.losses import (
    LPIPSLoss,
    PriorFeatureLoss,
    fft_amplitude_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    l1_loss,
    pyramid_l1_loss,
    resolve_perceptual,
)

TINY = RestorerConfig(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1))


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (so zero-initialised branches do something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=g) * 2 - 1


@pytest.mark.parametrize("size", [64, 128])
def test_output_shape_matches_input(size):
    model = _randomise(Restorer(RestorerConfig()))
    x = _faces(2, size)
    y = model(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not torch.allclose(y, x)  # random weights do change the image


def test_sizes_that_are_not_multiples_are_padded_and_cropped():
    model = _randomise(Restorer(TINY))
    assert TINY.multiple() == 8
    x = _faces(1, 40)[:, :, :, :27]  # (1, 3, 40, 27)
    assert model(x).shape == (1, 3, 40, 27)


def test_untrained_restorer_is_the_identity():
    model = Restorer(RestorerConfig())
    x = _faces(2, 64)
    assert torch.allclose(model(x), x, atol=1e-6)
    assert 0.1e6 < count_parameters(model) < 2e6


def test_residual_branch_gets_gradients_from_the_start():
    model = Restorer(TINY)
    x = _faces(2, 32)
    l1_loss(model(x), torch.zeros_like(x)).backward()
    assert model.ending.weight.grad.abs().sum() > 0


def test_folder_round_trip_gives_identical_outputs(tmp_path):
    model = _randomise(Restorer(TINY)).half().float()  # the folder stores fp16
    save_restorer(tmp_path / "r", model, TINY)
    loaded, cfg = load_restorer(tmp_path / "r")
    assert cfg == TINY and not loaded.training
    x = _faces(2, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["_class"] == "RestorerConfig"


def test_deepened_restorer_computes_the_same_function_then_trains_its_new_blocks():
    small = _randomise(Restorer(TINY)).eval()
    deeper_cfg = dataclasses.replace(TINY, enc_blocks=(1, 3), middle_blocks=2, dec_blocks=(2, 1))
    deeper = deepen_restorer(small, deeper_cfg).eval()
    x = _faces(2, 32)
    with torch.no_grad():
        assert torch.allclose(deeper(x), small(x), atol=1e-6)
    assert count_parameters(deeper) > count_parameters(small)
    new_beta = deeper.encoders[1][2].beta  # an appended block: zero residual scales
    assert torch.count_nonzero(new_beta) == 0
    deeper.train()
    (deeper(x) - x.flip(-1)).abs().mean().backward()
    assert new_beta.grad is not None and new_beta.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="only block counts"):
        deepen_restorer(small, dataclasses.replace(deeper_cfg, width=16))
    with pytest.raises(ConfigError, match="only grow"):
        deepen_restorer(small, dataclasses.replace(TINY, middle_blocks=0))


def test_mismatched_folder_raises_weights_error_naming_it(tmp_path):
    save_restorer(tmp_path / "r", Restorer(TINY), TINY)
    data = json.loads((tmp_path / "r" / "config.json").read_text())
    data["width"] = 16
    (tmp_path / "r" / "config.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=r"r: weights do not match the config"):
        load_restorer(tmp_path / "r")
    with pytest.raises(WeightsError, match="not found"):
        load_restorer(tmp_path / "missing")
    data["enc_blocks"] = [1]
    (tmp_path / "r" / "config.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="invalid restorer config"):
        load_restorer(tmp_path / "r")


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="same number of levels"):
        Restorer(RestorerConfig(enc_blocks=(1, 1), dec_blocks=(1,)))
    with pytest.raises(ConfigError, match="layers"):
        PatchDiscriminator(DiscriminatorConfig(layers=0))


def test_discriminator_gives_patch_logits():
    disc = PatchDiscriminator(DiscriminatorConfig(width=8, layers=3))
    assert disc(_faces(2, 64)).shape == (2, 1, 8, 8)


def _tiny_prior() -> Prior:
    cfg = PriorConfig(unet=UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2),
                                      num_res_blocks=1, attention_resolutions=(8,), num_heads=2,
                                      norm_groups=8),
                      schedule=ScheduleConfig(num_timesteps=100))
    return Prior(_randomise(UNet(cfg.unet)), cfg.schedule, cfg, image_size=16, source="tiny")


def _lpips():
    from flipnet.metrics.lpips import LPIPS

    return LPIPSLoss(_randomise(LPIPS("alex")))


@pytest.mark.parametrize("loss", [l1_loss, pyramid_l1_loss, fft_amplitude_loss,
                                  PriorFeatureLoss(_tiny_prior(), t=20), _lpips()],
                         ids=["l1", "pyramid", "fft", "prior", "lpips"])
def test_each_loss_is_zero_for_identical_images_and_positive_otherwise(loss):
    x = _faces(2, 64)
    y = (x + 0.3 * _faces(2, 64, seed=1)).clamp(-1, 1).requires_grad_()
    assert float(loss(x, x.clone())) == pytest.approx(0.0, abs=1e-6)
    value = loss(y, x)
    assert float(value.detach()) > 1e-4
    value.backward()
    assert y.grad.abs().sum() > 0  # it can train a restorer


def test_fft_loss_sees_high_frequencies_that_l1_underweights():
    x = torch.zeros(1, 3, 32, 32)
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None]) % 2 * 0.2 - 0.1
    y = x + checker  # a +-0.1 checkerboard: tiny L1 per pixel, one huge Fourier peak
    assert float(fft_amplitude_loss(y, x)) > 0
    assert float(pyramid_l1_loss(y, x)) == pytest.approx(0.0, abs=1e-7)  # pooling removes it


def test_gan_losses_reward_the_right_side():
    real, fake = torch.full((2, 1, 4, 4), 3.0), torch.full((2, 1, 4, 4), -3.0)
    for kind in ("nonsat", "hinge"):
        assert gan_discriminator_loss(real, fake, kind) < gan_discriminator_loss(fake, real, kind)
        assert gan_generator_loss(real, kind) < gan_generator_loss(fake, kind)
    assert float(gan_discriminator_loss(real, fake, "hinge")) == 0.0
    with pytest.raises(ConfigError, match="unknown GAN loss"):
        gan_generator_loss(real, "wgan")


def test_perceptual_auto_picks_the_prior_only_when_its_folder_exists(tmp_path):
    assert resolve_perceptual("auto", prior_path=tmp_path / "nope") == "none"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_perceptual("auto", prior_path=tmp_path) == "prior"
    assert resolve_perceptual("lpips") == "lpips"
    with pytest.raises(ConfigError, match="unknown perceptual loss"):
        resolve_perceptual("vgg")


@pytest.mark.parametrize("cfg", [
    TINY,
    RestorerConfig(),
    RestorerConfig(width=6, dw_expand=3, ffn_expand=1, unshuffle=1, enc_blocks=(2, 0, 1),
                   middle_blocks=0, dec_blocks=(0, 1, 3)),
])
def test_parameter_estimate_is_the_exact_count(cfg):
    assert cfg.parameter_estimate() == count_parameters(Restorer(cfg))


@pytest.mark.parametrize("changes, message", [
    ({"width": 10**6}, r"width = 1000000 is out of range \(1 to 1024\)"),
    ({"middle_blocks": 10**6}, r"middle_blocks = 1000000 is out of range"),
    ({"enc_blocks": (1,) * 12, "dec_blocks": (1,) * 12}, r"levels .* out of range \(0 to 8\)"),
    ({"enc_blocks": (1, 300), "dec_blocks": (1, 1)}, "enc_blocks entry = 300"),
    ({"image_size": 0}, "image_size = 0"),
    ({"width": 3, "dw_expand": 1}, "must be even"),
    ({"width": 1024, "enc_blocks": (1,) * 5, "dec_blocks": (1,) * 5}, "deepest level"),
    ({"width": 512, "enc_blocks": (1, 1, 1, 1), "dec_blocks": (1, 1, 1, 1), "middle_blocks": 200},
     "parameters, over the limit"),
])
def test_out_of_range_settings_are_refused_before_allocating(changes, message):
    cfg = dataclasses.replace(TINY, **changes)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
    with pytest.raises(ConfigError, match=message):
        Restorer(cfg)


def test_huge_config_json_is_a_weights_error_naming_folder_and_field(tmp_path):
    save_restorer(tmp_path / "r", Restorer(TINY), TINY)
    data = json.loads((tmp_path / "r" / "config.json").read_text())
    data["middle_blocks"] = 10**6  # used to build a million blocks (a hang)
    (tmp_path / "r" / "config.json").write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=f"{tmp_path / 'r'}.*middle_blocks"):
        load_restorer(tmp_path / "r")


def test_shipped_restorer_makes_a_degraded_face_sharper_and_closer(astronaut):
    """The default weights restore: a blurred, noisy face comes out with more fine detail
    (Laplacian energy) and closer to the sharp face than its input."""
    import cv2
    import numpy as np

    from flipnet.faces.align import align_face
    from flipnet.faces.detect import detect_all_faces
    from flipnet.metrics.psnr_ssim import psnr
    from flipnet.pipelines.methods import make_method

    face = detect_all_faces(astronaut)[0]
    hq = align_face(astronaut, face.landmarks5, size=128).crop
    small = cv2.resize(cv2.GaussianBlur(hq, (0, 0), 1.2), (64, 64), interpolation=cv2.INTER_AREA)
    noisy = small + np.random.default_rng(0).normal(0, 6, small.shape)
    lq = cv2.resize(np.clip(noisy, 0, 255).astype(np.uint8), (128, 128),
                    interpolation=cv2.INTER_CUBIC)
    out = make_method("restorer", device="cpu").restore(lq[None])[0]

    def detail(im):  # Laplacian energy of the gray image, without the noise floor of the LQ
        return cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32),
                             cv2.CV_32F).var()

    assert psnr(out, hq) > psnr(lq, hq) + 0.5
    assert detail(cv2.GaussianBlur(out, (0, 0), 0.7)) > detail(cv2.GaussianBlur(lq, (0, 0), 0.7))


def test_network_interpolation_mixes_the_weights_and_checks_its_inputs():
    cfg = RestorerConfig(image_size=16, width=8, enc_blocks=(1, 1), middle_blocks=1,
                         dec_blocks=(1, 1))
    torch.manual_seed(0)
    a, b = Restorer(cfg), Restorer(cfg)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    key = next(iter(a.state_dict()))
    for alpha in (0.0, 0.3, 1.0):
        mixed = interpolate_restorers(a, b, alpha).state_dict()
        want = (1 - alpha) * a.state_dict()[key] + alpha * b.state_dict()[key]
        assert torch.allclose(mixed[key], want)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(interpolate_restorers(a, b, 0.0)(x), a(x))
        assert not torch.allclose(interpolate_restorers(a, b, 0.5)(x), a(x))
    with pytest.raises(ConfigError, match="alpha must be in"):
        interpolate_restorers(a, b, 1.5)
    other = Restorer(RestorerConfig(image_size=16, width=16, enc_blocks=(1, 1), middle_blocks=1,
                                    dec_blocks=(1, 1)))
    with pytest.raises(ConfigError, match="configs differ"):
        interpolate_restorers(a, other, 0.5)
