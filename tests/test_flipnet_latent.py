"""FLIPNET on a latent prior (issue 18: everything that uses a prior works on latent priors too):
both streams are the autoencoder's latents, the face tokens read pixels, results are decoded;
the autoencoder is the prior's, never part of a FLIPNET folder."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.test_latent_prior import TINY_LATENT, UnshuffleAutoencoder, _latent_parts
from tests.tiny_flipnet import TINY_EMB, one_thread, write_train_inputs  # noqa: F401

from flipnet.diffusion.flipnet_sampling import flipnet_degrade, flipnet_restore
from flipnet.diffusion.schedules import make_schedule
from flipnet.models.flipnet import (
    FlipNet,
    FlipNetConfig,
    build_flipnet,
    load_flipnet,
    save_flipnet,
)
from flipnet.models.prior import save_prior
from flipnet.models.unet import UNet
from flipnet.training.flipnet import (
    DecodedIdentityLoss,
    FlipNetTrainConfig,
    mode_loss,
    train_flipnet,
)


@pytest.fixture(scope="module")
def latent_prior(tmp_path_factory):
    unet, ae = _latent_parts()
    return save_prior(tmp_path_factory.mktemp("latent") / "prior", unet, TINY_LATENT,
                      autoencoder=ae)


def _cfg(prior) -> FlipNetConfig:
    return FlipNetConfig(prior=str(prior), embedding=TINY_EMB, lora_rank=2, lora_alpha=2.0)


def _randomise_adapters(net, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.copy_((torch.randn(p.shape, generator=g) * scale).half().float())


def test_latent_flipnet_works_in_pixels_and_saves_no_autoencoder(latent_prior, tmp_path):
    net = build_flipnet(_cfg(latent_prior)).eval()
    assert (net.factor, net.image_size) == (2, 16)
    lq = torch.rand(2, 3, 24, 24) * 2 - 1
    z = net.encode(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert z.shape == (2, 4, 8, 8)
    _randomise_adapters(net)
    restored = flipnet_restore(net, lq, steps=3)
    degraded = flipnet_degrade(net, lq, steps=3)
    assert restored.shape == degraded.shape == (2, 3, 24, 24)  # back at the input's size
    assert not torch.allclose(restored, degraded)
    folder = save_flipnet(tmp_path / "fn", net)
    assert not any(k.startswith("autoencoder.") for k in net.adapter_state_dict())
    again = load_flipnet(folder, prior=latent_prior)
    assert again.autoencoder is not None
    assert torch.allclose(flipnet_restore(again, lq, steps=3), restored, atol=1e-5)


def test_restoration_on_a_latent_prior_depends_on_its_input():
    # an exactly invertible stand-in autoencoder (latents = pixel patches), so the decoder
    # does not hide what the latents carry
    net = _fresh_unshuffle_flipnet()
    assert net.image_size == 16
    _randomise_adapters(net, scale=0.3)
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 3, 16, 16, generator=g) * 2 - 1
    seen = []
    hook = net.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    out_a = flipnet_restore(net, a, steps=3, seed=7)
    hook.remove()
    assert set(seen) == {torch.Size([2, 12, 8, 8])}  # target + condition latents of a 16 px face
    assert net.autoencoder.decoded[-1].abs().max() > 1  # sampled latents reach decode unclipped
    out_b = flipnet_restore(net, b, steps=3, seed=7)
    # same seed, different LQ: different outputs (far above float noise) once the adapters
    # carry the condition; a fresh FLIPNET is the prior and does not read it at all
    assert (out_a - out_b).abs().mean() > 1e-4
    fresh = _fresh_unshuffle_flipnet()
    assert torch.equal(flipnet_restore(fresh, a, steps=3, seed=7),  # a fresh FLIPNET is the
                       flipnet_restore(fresh, b, steps=3, seed=7))  # prior: input unused


def test_mode_loss_runs_the_streams_on_latents(latent_prior):
    net = build_flipnet(_cfg(latent_prior))
    seen = []
    net.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    schedule = make_schedule(TINY_LATENT.schedule)
    hq, lq = torch.rand(2, 2, 3, 16, 16) * 2 - 1
    loss = mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(1),
                     encode=net.encode)
    loss.backward()
    assert seen == [torch.Size([4, 4, 8, 8])]  # target + condition latents, one batch
    assert torch.isfinite(loss) and any(p.grad is not None for p in net.trainable_parameters())


def test_identity_term_reads_the_decoded_x0_prediction_of_small_t_only():
    net = _fresh_unshuffle_flipnet()
    schedule = make_schedule(TINY_LATENT.schedule)
    big_t = schedule.num_timesteps - 1
    term = DecodedIdentityLoss(schedule, net.autoencoder.decode,
                               lambda a, b: (a - b).pow(2).mean(),  # stand-in for 1 - cos
                               weight=2.0, count=2, max_t=schedule.num_timesteps // 2)
    g = torch.Generator().manual_seed(4)
    hq = torch.rand(3, 3, 16, 16, generator=g) * 1.6 - 0.8
    z = net.encode(hq)
    t = torch.tensor([1, big_t, 3])
    noise = torch.randn(z.shape, generator=g)
    xt = schedule.q_sample(z, t, noise)
    perfect = schedule.training_target(z, t, noise)  # x0 prediction == the HQ latent
    assert float(term(xt, t, perfect, hq)) < 1e-8
    wrong = perfect + 0.5 * torch.randn(perfect.shape, generator=g)
    assert float(term(xt, t, wrong, hq)) > 1e-3
    spoiled = perfect.clone()
    spoiled[1] += 1.0  # the sample at large t does not count
    assert float(term(xt, t, spoiled, hq)) < 1e-8
    assert float(term(xt, torch.full_like(t, big_t), wrong, hq)) == 0.0


def test_identity_term_adds_its_gradient_to_the_adapters():
    net = _fresh_unshuffle_flipnet()
    _randomise_adapters(net)
    schedule = make_schedule(TINY_LATENT.schedule)
    hq, lq = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    term = DecodedIdentityLoss(schedule, net.autoencoder.decode,
                               lambda a, b: (a - b).abs().mean(), weight=1.0, count=4,
                               max_t=schedule.num_timesteps)

    def grads(identity):
        net.zero_grad()
        mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(1),
                  encode=net.encode, identity=identity).backward()
        return torch.cat([p.grad.flatten() for p in net.trainable_parameters()
                          if p.grad is not None])

    plain, with_identity = grads(None), grads(term)
    assert (with_identity - plain).abs().max() > 1e-6
    net.zero_grad()
    degrade = mode_loss(net, schedule, hq, lq, "degrade", torch.Generator().manual_seed(1),
                        encode=net.encode, identity=term)  # degrade mode: no identity term
    assert torch.equal(degrade, mode_loss(net, schedule, hq, lq, "degrade",
                                          torch.Generator().manual_seed(1), encode=net.encode))


def _train_cfg(tmp_path, latent_prior, **changes) -> FlipNetTrainConfig:
    """A 3-step run on tiny data written under ``tmp_path`` (embedder and inputs made once)."""
    from flipnet.models.face_embedding import FaceEmbedder, save_face_embedder

    if not (tmp_path / "embedder").is_dir():
        torch.manual_seed(2)
        save_face_embedder(tmp_path / "embedder", FaceEmbedder(TINY_EMB))
        write_train_inputs(tmp_path)
    settings = dict(
        data_dir=str(tmp_path / "hq"), split="all", real_lq_dir=str(tmp_path / "real_lq"),
        pairs_dir=str(tmp_path / "pairs"), pseudo_restorer=str(tmp_path / "restorer"),
        out_dir=str(tmp_path / "run"), embedder=str(tmp_path / "embedder"), presets=("gfpgan",),
        crop_size=32, flipnet=_cfg(latent_prior), batch_size=2, lr=1e-3, warmup_steps=1,
        steps=3, save_every=3, sample_every=3, sample_count=2, sample_steps=2, log_every=1,
        seed=1, threads=1)
    return FlipNetTrainConfig(**{**settings, **changes})


def test_training_on_a_latent_prior_exports_a_folder_that_loads(latent_prior, tmp_path):
    folder = train_flipnet(_train_cfg(tmp_path, latent_prior, identity_weight=0.5,
                                      identity_max_t=1000))
    net = load_flipnet(folder)
    assert net.autoencoder is not None and net.image_size == 16
    assert (tmp_path / "run" / "samples").is_dir()
    assert "identity term x0.5" in (folder / "MODEL_CARD.md").read_text()


def test_continued_training_keeps_the_folders_own_decoder(latent_prior, tmp_path):
    from flipnet.errors import ConfigError
    from flipnet.models.autoencoder import load_autoencoder

    plain = train_flipnet(_train_cfg(tmp_path, latent_prior, out_dir=str(tmp_path / "plain")))
    # the same folder with its own decoder (a decoder-only leg: other decoder weights)
    own = load_flipnet(plain)
    with torch.no_grad():
        for p in own.autoencoder.decoder.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    own.config = dataclasses.replace(own.config, decoder="autoencoder")
    own_folder = save_flipnet(tmp_path / "own", own)
    with_decoder = dataclasses.replace(_cfg(latent_prior), decoder="autoencoder")
    folder = train_flipnet(_train_cfg(tmp_path, latent_prior, init_from=str(own_folder),
                                      flipnet=with_decoder, identity_weight=0.5,
                                      identity_max_t=1000, out_dir=str(tmp_path / "more")))
    carried, _ = load_autoencoder(folder / "autoencoder")
    saved, _ = load_autoencoder(own_folder / "autoencoder")
    prior_ae, _ = load_autoencoder(latent_prior / "autoencoder")
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(carried.decode(z), saved.decode(z))
    assert not torch.allclose(carried.decode(z), prior_ae.decode(z), atol=1e-2)
    with pytest.raises(ConfigError, match="carries no own decoder"):
        train_flipnet(_train_cfg(tmp_path, latent_prior, init_from=str(plain),
                                 flipnet=with_decoder, out_dir=str(tmp_path / "none")))


def _fresh_unshuffle_flipnet(**changes) -> FlipNet:
    """A FLIPNET with untrained adapters (it ignores its input) on an exactly invertible
    stand-in autoencoder, so what reaches the pixels is what the latents carry."""
    unet_cfg = dataclasses.replace(TINY_LATENT.unet, in_channels=12, out_channels=12)
    torch.manual_seed(3)
    unet = UNet(unet_cfg)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.05)
    return FlipNet(FlipNetConfig(embedding=TINY_EMB, lora_rank=2, **changes),
                   dataclasses.replace(TINY_LATENT, unet=unet_cfg),
                   prior_state=unet.state_dict(), autoencoder=UnshuffleAutoencoder(2, 16)).eval()


def test_lowpass_guidance_keeps_the_known_images_low_frequencies_in_pixels():
    from flipnet.diffusion.guidance import lowpass

    net = _fresh_unshuffle_flipnet()
    g = torch.Generator().manual_seed(1)
    lq = torch.rand(2, 3, 16, 16, generator=g) * 1.6 - 0.8
    free = flipnet_restore(net, lq, steps=10, seed=2)
    guided = flipnet_restore(net, lq, steps=10, seed=2, guidance=4, guidance_free=0.0)

    def low_error(x):  # RMSE of the 4x low band (image factor 4 = latent 2 x f 2)
        return (lowpass(x, 4) - lowpass(lq, 4)).pow(2).mean().sqrt().item()

    assert low_error(guided) < 0.5 * low_error(free)
    # the low band follows the input, so two inputs now give two outputs
    other = flipnet_restore(net, -lq, steps=10, seed=2, guidance=4, guidance_free=0.0)
    assert (guided - other).abs().mean() > 0.1
    # the folder's default applies when the call does not say, and each image keeps its seed
    default = _fresh_unshuffle_flipnet(guidance_factor=4, guidance_free=0.0)
    assert torch.allclose(flipnet_restore(default, lq, steps=10, seed=2), guided, atol=1e-5)
    single = flipnet_restore(default, lq[1:], steps=10, seed=2, indices=[1])
    assert torch.allclose(single, guided[1:], atol=1e-5)
    # degradation mode does not take the restoration default, only an explicit request
    assert torch.allclose(flipnet_degrade(default, lq, steps=10, seed=2),
                          flipnet_degrade(net, lq, steps=10, seed=2), atol=1e-6)
    assert not torch.allclose(flipnet_degrade(default, lq, steps=10, seed=2, guidance=4,
                                              guidance_free=0.0),
                              flipnet_degrade(net, lq, steps=10, seed=2), atol=1e-3)


def test_guidance_settings_are_checked():
    from flipnet.errors import ConfigError

    net = _fresh_unshuffle_flipnet()
    with pytest.raises(ConfigError, match="guidance"):
        flipnet_restore(net, torch.zeros(1, 3, 16, 16), steps=3, guidance=-1)
    with pytest.raises(ConfigError, match="guidance_free"):
        flipnet_restore(net, torch.zeros(1, 3, 16, 16), steps=3, guidance=4, guidance_free=2)


def test_colour_fix_gives_the_restoration_the_inputs_low_band():
    from flipnet.diffusion.guidance import lowpass

    net = _fresh_unshuffle_flipnet()
    g = torch.Generator().manual_seed(4)
    lq = torch.rand(2, 3, 16, 16, generator=g) * 1.2 - 0.6
    free = flipnet_restore(net, lq, steps=4, seed=1)
    fixed = flipnet_restore(net, lq, steps=4, seed=1, color_fix=4)

    def low_error(x):
        return (lowpass(x, 4) - lowpass(lq, 4)).pow(2).mean().sqrt().item()

    assert low_error(fixed) < 0.3 * low_error(free)
    # the detail above the band is the sample's own (up to the final clamp to [-1, 1])
    high_fixed, high_free = fixed - lowpass(fixed, 4), free - lowpass(free, 4)
    assert torch.corrcoef(torch.stack([high_fixed.flatten(), high_free.flatten()]))[0, 1] > 0.9
    default = _fresh_unshuffle_flipnet(color_fix=4)  # the folder's default, restoration only
    assert torch.allclose(flipnet_restore(default, lq, steps=4, seed=1), fixed, atol=1e-5)
    assert torch.allclose(flipnet_degrade(default, lq, steps=4, seed=1),
                          flipnet_degrade(net, lq, steps=4, seed=1), atol=1e-6)


def test_a_flipnet_folder_may_carry_its_own_decoder(latent_prior, tmp_path):
    from flipnet.errors import WeightsError
    from flipnet.models.autoencoder import load_autoencoder, save_autoencoder

    net = build_flipnet(_cfg(latent_prior)).eval()
    _randomise_adapters(net)
    plain = save_flipnet(tmp_path / "plain", net)
    # a decoder-only leg: the prior's autoencoder with other decoder weights
    ae, ae_cfg = load_autoencoder(latent_prior / "autoencoder")
    with torch.no_grad():
        for p in ae.decoder.parameters():
            p.add_((torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.2)
                   .half().float())
    with_own = load_flipnet(plain)
    with_own.config = dataclasses.replace(net.config, decoder="autoencoder")
    with_own.autoencoder = ae
    folder = save_flipnet(tmp_path / "own", with_own)
    assert (folder / "autoencoder" / "config.json").is_file()  # saved with the adapters
    folder_net = load_flipnet(folder)
    plain_net = load_flipnet(plain)
    lq = torch.rand(1, 3, 16, 16) * 2 - 1
    z = plain_net.encode(lq)
    assert torch.equal(folder_net.encode(lq), z)  # the same latents for the adapters
    assert not torch.allclose(folder_net.decode(z), plain_net.decode(z), atol=1e-2)
    assert torch.allclose(folder_net.decode(z), ae.decode(z), atol=1e-3)  # fp16 weights
    # an autoencoder whose encoder differs is refused, naming the folder
    with torch.no_grad():
        next(ae.encoder.parameters()).add_(0.5)
    save_autoencoder(folder / "autoencoder", ae, ae_cfg)
    with pytest.raises(WeightsError, match="encoder or latent statistics differ"):
        load_flipnet(folder)
