"""Prior training: data, loss going down, exact resume, NaN stop, export + sampling."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flipnet.errors import ConfigError
from flipnet.io import save_image
from flipnet.models.prior import load_prior
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.unet import UNetConfig
from flipnet.pipelines.sample import sample_prior
from flipnet.training.data import FaceFolder, ShuffleFlipSampler
from flipnet.training.harness import EMA, TrainingDiverged, checkpoints, every
from flipnet.training.prior import PriorTrainConfig, train_prior

TINY_PRIOR = PriorConfig(
    unet=UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), num_heads=2, norm_groups=8),
    schedule=ScheduleConfig(num_timesteps=100, beta_schedule="cosine", prediction="v"))


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """12 synthetic 24x24 'faces' (a coloured disk on a dark background) + one corrupt file."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    for i in range(12):
        cy, cx = rng.uniform(8, 16, 2)
        disk = ((yy - cy) ** 2 + (xx - cx) ** 2 < 40)[..., None]
        rgb = np.where(disk, rng.integers(150, 255, 3), 20).astype(np.uint8)
        save_image(root / f"face{i:02d}.png", rgb)
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _cfg(data, out, **kw) -> PriorTrainConfig:
    base = {"data_dir": str(data), "out_dir": str(out), "prior": TINY_PRIOR, "batch_size": 4,
            "lr": 2e-3, "warmup_steps": 1, "steps": 4, "sample_every": 0, "save_every": 2,
            "log_every": 1, "sample_count": 4, "sample_steps": 5, "seed": 3, "threads": 1}
    return PriorTrainConfig(**{**base, **kw})


def test_face_folder_skips_unreadable_and_resizes(blobs):
    with pytest.warns(UserWarning, match="broken.png"):
        ds = FaceFolder(blobs, 16, progress=False)
    assert len(ds) == 12 and str(blobs / "broken.png") in ds.skipped
    x = ds[0]
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(ds[(0, True)], x.flip(-1))


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = ShuffleFlipSampler(50, seed=1), ShuffleFlipSampler(50, seed=1)
    first = list(a)
    assert first == list(b) and sorted(i for i, _ in first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first and any(f for _, f in first) and not all(f for _, f in first)


def test_ema_warmup_and_state_round_trip():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    expected = 0.1 * (model.weight - 1.0) + 0.9 * model.weight
    assert torch.allclose(ema.shadow["weight"], expected)
    other = EMA(torch.nn.Linear(2, 2))
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    assert every(5, 10) and not every(5, 11) and not every(0, 10)


def test_loss_goes_down_and_export_samples(blobs, tmp_path):
    with pytest.warns(UserWarning):
        folder = train_prior(_cfg(blobs, tmp_path / "run", steps=30, save_every=30,
                                  sample_every=30))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert len(losses) == 30
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:5])
    assert (tmp_path / "run" / "samples" / "step-0000030.png").is_file()
    assert (folder / "loss_curve.png").is_file()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "30 steps" in card and str(blobs) in card
    prior = load_prior(folder)
    assert prior.config == TINY_PRIOR
    one = sample_prior(folder, n=3, steps=5, batch_size=1, progress=False)
    three = sample_prior(prior, n=3, steps=5, batch_size=3, progress=False)
    assert one.shape == (3, 16, 16, 3) and one.dtype == np.uint8
    assert np.abs(one.astype(int) - three.astype(int)).max() <= 1  # batching does not matter


def _final_state(out):
    ckpt = checkpoints(out / "checkpoints")[-1]
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    return ckpt.name, load_file(str(ckpt / "model.safetensors")), ema["shadow"]


def test_resume_is_exact(blobs, tmp_path):
    runs = [_cfg(blobs, tmp_path / "straight", steps=4), _cfg(blobs, tmp_path / "split", steps=2)]
    for cfg in runs:
        with pytest.warns(UserWarning, match="broken.png"):
            train_prior(cfg)
    # another config in the same out_dir is refused, naming the setting that differs
    with pytest.raises(ConfigError, match=r"different config \(lr: 0.002 -> 0.001"):
        train_prior(_cfg(blobs, tmp_path / "split", steps=4, lr=1e-3))
    # the same config (more steps is harmless) continues automatically, no --resume needed
    with pytest.warns(UserWarning, match="broken.png"):
        train_prior(_cfg(blobs, tmp_path / "split", steps=4))
    name_a, model_a, ema_a = _final_state(tmp_path / "straight")
    name_b, model_b, ema_b = _final_state(tmp_path / "split")
    assert name_a == name_b == "step-0000004"
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # and steps 3-4 really changed the weights saved at step 2
    at_2 = load_file(str(tmp_path / "split" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert any(not torch.equal(model_a[k], at_2[k]) for k in model_a)


def test_nan_loss_stops_with_last_good_checkpoint(blobs, tmp_path):
    cfg = _cfg(blobs, tmp_path / "nan", steps=10, save_every=1, lr=1e12, grad_clip=0.0)
    with pytest.warns(UserWarning), pytest.raises(TrainingDiverged, match=r"at step \d+") as e:
        train_prior(cfg)
    found = checkpoints(tmp_path / "nan" / "checkpoints")
    assert found and str(found[-1]) in str(e.value)
    state = load_file(str(found[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (tmp_path / "nan" / "prior").exists()


def test_train_config_round_trips_through_json(tmp_path):
    from flipnet.config import load_config, save_config

    cfg = _cfg("data", "out", mixed_precision="bf16")
    save_config(cfg, tmp_path / "c.json")
    assert load_config(PriorTrainConfig, tmp_path / "c.json") == cfg
    assert all("help" in f.metadata for f in dataclasses.fields(PriorTrainConfig))


def _tiny_autoencoder(folder):
    """A random-init f = 2 autoencoder folder for 16 px faces (latents (4, 8, 8))."""
    from flipnet.models.autoencoder import AutoencoderConfig, FaceAutoencoder, save_autoencoder

    torch.manual_seed(0)
    cfg = AutoencoderConfig(image_size=16, latent_channels=4, block_out_channels=(8, 8),
                            layers_per_block=1, mid_blocks=1, norm_num_groups=4,
                            latent_shift=(0.1, -0.1, 0.0, 0.2), latent_scale=(0.5, 0.5, 1.0, 2.0))
    return save_autoencoder(folder, FaceAutoencoder(cfg), cfg)


def test_latent_prior_trains_on_cached_latents_and_exports_a_pixel_sampler(blobs, tmp_path):
    from flipnet.models.autoencoder import load_autoencoder
    from flipnet.training.data import LatentFaces

    ae_folder = _tiny_autoencoder(tmp_path / "ae")
    latent_unet = dataclasses.replace(TINY_PRIOR.unet, image_size=8, in_channels=4,
                                      out_channels=4, attention_resolutions=(4,))
    latent = dataclasses.replace(TINY_PRIOR, unet=latent_unet)
    with pytest.warns(UserWarning):
        folder = train_prior(_cfg(blobs, tmp_path / "run", prior=latent, steps=20,
                                  autoencoder=str(ae_folder), loss_weighting="min_snr",
                                  sample_every=20, save_every=20))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert "latent UNet" in (folder / "MODEL_CARD.md").read_text()
    prior = load_prior(folder)
    assert prior.image_size == 16 and prior.autoencoder is not None
    faces = sample_prior(prior, n=2, steps=4, batch_size=2, progress=False)
    assert faces.shape == (2, 16, 16, 3)  # decoded to pixels
    # the cache holds the autoencoder's latents of both flips and is reused only for that model
    autoencoder, _ = load_autoencoder(ae_folder)
    with pytest.warns(UserWarning):
        faces_ds = FaceFolder(blobs, 16, progress=False)
    cache = tmp_path / "run" / "latents.safetensors"
    cached = LatentFaces(faces_ds, autoencoder, cache=cache, progress=False)
    with torch.no_grad():
        direct = autoencoder.encode(faces_ds[(3, True)][None])[0]
    assert torch.allclose(cached[(3, True)], direct, atol=2e-2)  # stored as fp16
    with torch.no_grad():
        next(autoencoder.parameters()).add_(0.5)
    changed = LatentFaces(faces_ds, autoencoder, cache=cache, progress=False)
    assert not torch.allclose(changed.latents.float(), cached.latents.float())
    written = cache.stat().st_ino  # a rewrite is a new file renamed over it
    with torch.no_grad():  # a decoder fine-tuned later (train_encoder = false) keeps the cache
        next(autoencoder.decoder.parameters()).add_(0.5)
    LatentFaces(faces_ds, autoencoder, cache=cache, progress=False)
    assert cache.stat().st_ino == written
    from flipnet.models.autoencoder import FaceAutoencoder  # and so does a grown decoder
    grown = FaceAutoencoder(dataclasses.replace(
        autoencoder.config, decoder_channels=tuple(2 * c for c in
                                                   autoencoder.config.block_out_channels)))
    grown.encoder.load_state_dict(autoencoder.encoder.state_dict())
    LatentFaces(faces_ds, grown, cache=cache, progress=False)
    assert cache.stat().st_ino == written


def test_latent_prior_refuses_a_mismatched_autoencoder(blobs, tmp_path):
    from flipnet.errors import FlipnetError

    ae_folder = _tiny_autoencoder(tmp_path / "ae")
    with pytest.raises(FlipnetError, match="latent channels"):
        train_prior(_cfg(blobs, tmp_path / "bad", autoencoder=str(ae_folder)))  # 3-channel UNet


def test_gpu_speed_switches_train_the_same_on_cpu(blobs, tmp_path):
    """channels_last and data_on_device (the GPU command's switches) change memory layout and
    where the data lives, not what is learned: same losses as the plain run, to float tolerance."""
    with pytest.warns(UserWarning):
        train_prior(_cfg(blobs, tmp_path / "plain", steps=3, save_every=3))
    with pytest.warns(UserWarning):
        train_prior(_cfg(blobs, tmp_path / "fast", steps=3, save_every=3, channels_last=True,
                         data_on_device=True))
    plain, fast = ([json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").open()]
                   for run in ("plain", "fast"))
    assert len(plain) == len(fast) == 3
    assert np.allclose(plain, fast, rtol=1e-3, atol=1e-5)


def test_device_faces_match_the_folder_items(blobs):
    from flipnet.training.data import DeviceFaces

    with pytest.warns(UserWarning):
        faces = FaceFolder(blobs, 16, progress=False)
    held = DeviceFaces(faces, "cpu")
    assert len(held) == len(faces)
    for key in (0, (3, True), (5, False)):
        assert torch.allclose(held[key], faces[key], atol=1e-6)


def test_init_from_an_export_starts_at_its_weights(blobs, tmp_path):
    with pytest.warns(UserWarning):
        first = train_prior(_cfg(blobs, tmp_path / "first"))
    start = load_prior(first).model.state_dict()
    with pytest.warns(UserWarning):  # no steps: the export is the starting point itself
        second = train_prior(_cfg(blobs, tmp_path / "second", init_from=str(first), steps=0))
    again = load_prior(second).model.state_dict()
    assert all(torch.equal(start[k], again[k]) for k in start)
    assert f"started from `{first}`" in (second / "MODEL_CARD.md").read_text()
    wider = dataclasses.replace(TINY_PRIOR, unet=dataclasses.replace(TINY_PRIOR.unet,
                                                                      model_channels=8))
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="differs"):
        train_prior(_cfg(blobs, tmp_path / "bad", init_from=str(first), prior=wider))


def test_lr_decay_from_anneals_the_last_leg_to_zero(blobs, tmp_path):
    with pytest.warns(UserWarning):  # the corrupt blob
        train_prior(_cfg(blobs, tmp_path / "run", steps=8, save_every=8, lr_decay_from=4))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert lrs[:4] == pytest.approx([2e-3] * 4)  # constant until the decay starts
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))  # then strictly falling
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[5] == pytest.approx(2e-3 * 0.5 * (1 + np.cos(np.pi * 2 / 4)))  # half a cosine
