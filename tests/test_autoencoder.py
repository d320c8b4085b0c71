"""Face autoencoder (issue 18): shapes, range, latent normalisation, save/load, a training smoke
test that exports a folder with latent stats, config errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, FlipnetError, WeightsError
from flipnet.io import save_image
from flipnet.models.autoencoder import (
    AutoencoderConfig,
    FaceAutoencoder,
    kl_divergence,
    load_autoencoder,
    save_autoencoder,
)
from flipnet.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

TINY = AutoencoderConfig(image_size=16, block_out_channels=(8, 16, 16), layers_per_block=1,
                         mid_blocks=1, norm_num_groups=4)  # f = 4: (4, 4, 4) latents


def _images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_range_and_determinism():
    model = FaceAutoencoder(TINY).eval()
    x = _images()
    with torch.no_grad():
        z = model.encode(x)
        assert model.factor == TINY.factor == 4 and TINY.latent_size == 4
        assert z.shape == (3, 4, 4, 4)
        assert torch.equal(model.encode(x), z)  # the posterior mean: no sampling
        mean, logvar = model.encode_posterior(x)
        assert mean.shape == logvar.shape == z.shape
        assert model.decode(z).shape == x.shape
        # any size that is a multiple of f works; the output stays in [-1, 1] for extreme z
        assert model.encode(_images(1, 24)).shape == (1, 4, 6, 6)
        out = model.decode(torch.randn(2, 4, 4, 4) * 1e4)
        assert out.min() >= -1 and out.max() <= 1 and out.abs().max() == 1
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(_images(1, 18))


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    zeros = torch.zeros(2, 4, 3, 3)
    assert torch.allclose(kl_divergence(zeros, zeros), torch.zeros(2))
    assert (kl_divergence(zeros + 1, zeros - 1) > 0).all()


def test_save_load_round_trip(tmp_path):
    cfg = dataclasses.replace(TINY, latent_shift=(0.1, -0.2, 0.0, 0.3),
                              latent_scale=(2.0, 0.5, 1.0, 1.5))
    model = FaceAutoencoder(cfg).eval()
    with torch.no_grad():  # fp16 storage: round the weights first so the outputs match exactly
        for p in model.parameters():
            p.copy_(p.half().float())
    folder = save_autoencoder(tmp_path / "ae", model, cfg)
    loaded, cfg2 = load_autoencoder(folder)
    assert cfg2 == cfg and load_config(AutoencoderConfig, folder / "config.json") == cfg
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        z = model.encode(x)
        assert torch.equal(loaded.decode(z), model.decode(z))
    # the latent stats live in the config, not in the weights
    assert not any("latent" in k for k in model.state_dict())
    with pytest.raises(WeightsError, match="nowhere"):
        load_autoencoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="empty: no config.json"):
        load_autoencoder(tmp_path / "empty")
    # weights of another architecture are refused by name
    save_config(dataclasses.replace(cfg, latent_channels=3, latent_shift=None,
                                    latent_scale=None), folder / "config.json")
    with pytest.raises(WeightsError, match="do not match the config"):
        load_autoencoder(folder)


def test_normalization_matches_the_raw_path():
    plain = FaceAutoencoder(TINY).eval()
    shift, scale = (0.5, -1.0, 0.25, 0.0), (2.0, 4.0, 0.5, 1.0)
    normed = FaceAutoencoder(dataclasses.replace(TINY, latent_shift=shift, latent_scale=scale))
    normed.load_state_dict(plain.state_dict())
    normed.eval()
    x = _images()
    with torch.no_grad():
        raw, _ = plain.encode_posterior(x)
        assert torch.equal(plain.encode(x), raw)  # no stats: the identity
        z = normed.encode(x)
        expected = (raw - torch.tensor(shift).view(1, 4, 1, 1)) / torch.tensor(scale).view(
            1, 4, 1, 1)
        assert torch.allclose(z, expected, atol=1e-6)
        assert torch.allclose(normed.denormalize(z), raw, atol=1e-6)
        assert torch.allclose(normed.decode(z), plain.decode(raw), atol=1e-5)
        assert torch.allclose(normed.decode(z), plain.decoder(raw).clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"block_out_channels": ()}, "block_out_channels is empty"),
    ({"block_out_channels": (8, 10)}, "multiple of norm_num_groups = 4"),
    ({"image_size": 18}, "image_size 18 is not a multiple of the factor f = 4"),
    ({"latent_channels": 0}, r"latent_channels = 0 is out of range"),
    ({"latent_shift": (0.0, 0.0)}, "latent_shift has 2 entries, one per latent channel"),
    ({"latent_scale": (1.0, 1.0, 0.0, 1.0)}, "latent_scale .* must be positive"),
    ({"latent_scale": (1.0, float("nan"), 1.0, 1.0)}, "latent_scale .* is not finite"),
    ({"decoder_channels": (8, 16)}, r"decoder_channels \[8, 16\] needs one entry per encoder "
                                    "level"),
    ({"decoder_channels": (8, 16, 18)}, "every decoder_channels entry must be a multiple"),
    ({"decoder_layers_per_block": 0}, "decoder_layers_per_block = 0 is out of range"),
])
def test_config_errors_name_the_setting(changes, message):
    with pytest.raises(ConfigError, match=message):
        FaceAutoencoder(dataclasses.replace(TINY, **changes))


def _face(rng, size=16) -> np.ndarray:
    """A synthetic 'face': a bright disk of a random colour on a dark background."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.3 * size) ** 2
    return np.where(disk[..., None], rng.integers(120, 255, 3), 30).astype(np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """19 synthetic faces; face008 and face018 fall in the test split."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(19):
        save_image(root / f"face{i:03d}.png", _face(rng))
    return root


def _train_cfg(data, out, **kw) -> AutoencoderTrainConfig:
    base = {"data_dir": str(data), "out_dir": str(out), "autoencoder": TINY, "batch_size": 4,
            "lr": 3e-3, "warmup_steps": 1, "steps": 30, "lr_schedule": "constant",
            "gan_start": 20, "gan_weight": 0.05, "sample_every": 30, "save_every": 15,
            "log_every": 1, "sample_count": 3, "seed": 1, "threads": 1, "val_count": 3,
            "stats_count": 10, "eval_count": 5, "ema_decay": 0.9}
    return AutoencoderTrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_and_exports_latent_stats(faces, tmp_path):
    folder = train_autoencoder(_train_cfg(faces, tmp_path / "run"), command="pytest")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    steps = [x for x in log if "loss" in x]
    val = [x for x in log if "val_psnr" in x]
    assert len(steps) == 30 and "gan_d" in steps[-1] and "gan_d" not in steps[5]
    l1 = [x["l1"] for x in steps]
    assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:3])
    assert [x["step"] for x in val] == [15, 30] and val[1]["val_psnr"] > val[0]["val_psnr"]
    assert (tmp_path / "run" / "samples" / "step-0000030.png").is_file()
    model, cfg = load_autoencoder(folder)
    assert cfg.latent_shift is not None and len(cfg.latent_scale) == 4
    assert dataclasses.replace(cfg, latent_shift=None, latent_scale=None) == TINY
    # with the exported stats the training latents are about zero-mean, unit-variance
    from flipnet.training.data import FaceFolder

    x = torch.stack([FaceFolder(faces, 16, progress=False)[i] for i in range(3, 13)])
    with torch.no_grad():
        z = model.encode(x)  # (10, 4, 4, 4): the faces the stats were computed on
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["faces"] == 2 and evaluation["psnr"] > 10
    card = (folder / "MODEL_CARD.md").read_text()
    assert "30 steps" in card and "`pytest`" in card and "f = 4" in card
    assert "2 test-split faces" in card and "CPU-hours" in card
    assert (folder / "val_curve.png").is_file()


def test_too_few_images_and_config_round_trip(faces, tmp_path):
    with pytest.raises(FlipnetError, match="fewer than one batch"):
        train_autoencoder(_train_cfg(faces, tmp_path / "small", val_count=15))
    cfg = _train_cfg("data", "out", mixed_precision="bf16")
    save_config(cfg, tmp_path / "c.json")
    assert load_config(AutoencoderTrainConfig, tmp_path / "c.json") == cfg
    assert all("help" in f.metadata for f in dataclasses.fields(AutoencoderTrainConfig))


def _final_state(out):
    from safetensors.torch import load_file

    from flipnet.training.harness import checkpoints

    ckpt = checkpoints(out / "checkpoints")[-1]
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    return (ckpt.name, load_file(str(ckpt / "model.safetensors")),
            load_file(str(ckpt / "model_1.safetensors")), ema["shadow"])


def test_resume_is_exact_with_posterior_noise_and_the_gan(faces, tmp_path):
    kw = {"steps": 4, "gan_start": 1, "save_every": 2, "sample_every": 0, "val_count": 0,
          "eval_count": 0}
    train_autoencoder(_train_cfg(faces, tmp_path / "straight", **kw))
    train_autoencoder(_train_cfg(faces, tmp_path / "split", **{**kw, "steps": 2}))
    train_autoencoder(_train_cfg(faces, tmp_path / "split", **kw))  # continues from step 2
    name_a, model_a, disc_a, ema_a = _final_state(tmp_path / "straight")
    name_b, model_b, disc_b, ema_b = _final_state(tmp_path / "split")
    assert name_a == name_b == "step-0000004"
    for a, b in ((model_a, model_b), (disc_a, disc_b), (ema_a, ema_b)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_only_fine_tuning_keeps_the_latents(faces, tmp_path):
    kw = {"steps": 6, "sample_every": 0, "save_every": 6, "eval_count": 0}
    first = train_autoencoder(_train_cfg(faces, tmp_path / "first", **kw))
    with pytest.raises(FlipnetError, match="needs init_from"):
        train_autoencoder(_train_cfg(faces, tmp_path / "bad", train_encoder=False, **kw))
    second = train_autoencoder(_train_cfg(faces, tmp_path / "second", init_from=str(first),
                                          train_encoder=False, stats_count=4, **kw))
    a, cfg_a = load_autoencoder(first)
    b, cfg_b = load_autoencoder(second)
    enc_a, enc_b = a.encoder.state_dict(), b.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)  # the same latents
    # kept, not recomputed: 4 faces would give other statistics than the first run's 10
    assert (cfg_b.latent_shift, cfg_b.latent_scale) == (cfg_a.latent_shift, cfg_a.latent_scale)
    card = (second / "MODEL_CARD.md").read_text()
    assert f"started from `{first}`" in card and "encoder frozen" in card
    assert f"kept from `{first}`" in card
    dec_a, dec_b = a.decoder.state_dict(), b.decoder.state_dict()
    assert any(not torch.equal(dec_a[k], dec_b[k]) for k in dec_a)  # the decoder learned
    other = dataclasses.replace(TINY, latent_channels=2)
    with pytest.raises(FlipnetError, match="architecture differs"):
        train_autoencoder(_train_cfg(faces, tmp_path / "arch", init_from=str(first),
                                     autoencoder=other, **kw))


def test_a_decoder_only_leg_can_grow_the_decoder_and_keep_the_latents(faces, tmp_path):
    kw = {"steps": 4, "sample_every": 0, "save_every": 4, "eval_count": 0}
    first = train_autoencoder(_train_cfg(faces, tmp_path / "first", **kw))
    wide = dataclasses.replace(TINY, decoder_channels=(16, 32, 32), decoder_layers_per_block=2)
    assert FaceAutoencoder(wide).decoder.conv_in.out_channels == 32
    with pytest.raises(FlipnetError, match="architecture differs"):  # the encoder would move
        train_autoencoder(_train_cfg(faces, tmp_path / "both", init_from=str(first),
                                     autoencoder=wide, **kw))
    grown = train_autoencoder(_train_cfg(faces, tmp_path / "grown", init_from=str(first),
                                         autoencoder=wide, train_encoder=False, **kw))
    a, cfg_a = load_autoencoder(first)
    b, cfg_b = load_autoencoder(grown)
    assert cfg_b.decoder_levels == (16, 32, 32) and cfg_b.decoder_depth == 2
    assert cfg_b.encoder_part() == cfg_a.encoder_part()
    x = _images(2)
    assert torch.equal(a.encode(x), b.encode(x))  # the same latents, so the prior stays valid
    assert b.decode(b.encode(x)).shape == x.shape
    assert "decoder channels [16, 32, 32] with 3 block(s) per level" in (
        grown / "MODEL_CARD.md").read_text()
    other = dataclasses.replace(wide, latent_channels=2)  # beyond the decoder: refused
    with pytest.raises(FlipnetError, match="beyond the decoder"):
        train_autoencoder(_train_cfg(faces, tmp_path / "other", init_from=str(first),
                                     autoencoder=other, train_encoder=False, **kw))


def test_the_multiscale_term_is_logged_weighted_and_named_in_the_card(faces, tmp_path):
    kw = {"steps": 3, "sample_every": 0, "save_every": 3, "eval_count": 0, "gan_weight": 0.0}
    folder = train_autoencoder(_train_cfg(faces, tmp_path / "pyr", pyramid_weight=2.0, **kw))
    logged = [json.loads(line) for line in (tmp_path / "pyr" / "log.jsonl").open()]
    assert all(row["pyramid"] > 0 for row in logged if "l1" in row)  # (not the val rows)
    assert "multi-scale L1 (2x-16x pooled) x2.0" in (folder / "MODEL_CARD.md").read_text()
    plain = train_autoencoder(_train_cfg(faces, tmp_path / "plain", **kw))
    assert "pyramid" not in json.loads((tmp_path / "plain" / "log.jsonl").open().readline())
    assert "multi-scale" not in (plain / "MODEL_CARD.md").read_text()


def test_a_leg_can_mix_in_a_second_folder(faces, tmp_path):
    extra = tmp_path / "real-lq"
    rng = np.random.default_rng(5)
    for i in range(5):  # noisy faces, as real LQ would be
        noisy = _face(rng).astype(np.int16) + rng.integers(-40, 40, (16, 16, 3))
        save_image(extra / f"lq{i}.png", np.clip(noisy, 0, 255).astype(np.uint8))
    kw = {"steps": 3, "sample_every": 0, "save_every": 3, "eval_count": 0}
    folder = train_autoencoder(_train_cfg(faces, tmp_path / "mixed", extra_data_dir=str(extra),
                                          extra_split="all", extra_repeat=2, **kw))
    card = (folder / "MODEL_CARD.md").read_text()
    # 19 faces: 2 in the test split, 3 held out for validation; the extra 5 twice each
    assert "(14 faces;" in card and f"mixed with `{extra}`, split `all` (5 faces x 2)" in card
    with pytest.raises(FlipnetError, match="nowhere"):
        train_autoencoder(_train_cfg(faces, tmp_path / "bad", extra_data_dir=str(tmp_path / "nowhere"),
                                     **kw))
