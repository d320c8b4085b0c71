"""Public checkpoint loading: guided-diffusion / DifFace state dicts, checked against their real
layout (``tests/gd_layout.py``, written from guided-diffusion's and DifFace's ``UNetModel``), and
diffusers UNet2DModel folders."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from gd_layout import GDConfig, guided_layout, random_state, reference_forward

from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import WeightsError
from flipnet.models.prior import load_prior
from flipnet.models.public_checkpoints import PRESETS, configs_from_flags, convert_guided_state
from flipnet.models.unet import UNet
from flipnet.weights import load_into

# script_util flag names (as guided-diffusion's command lines give them)
FLAGS = {"image_size": 16, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
         "attention_resolutions": "8", "num_head_channels": 32, "learn_sigma": True,
         "diffusion_steps": 1000, "noise_schedule": "linear", "use_scale_shift_norm": True}
FLAGS_GD = GDConfig(image_size=16, num_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), num_head_channels=32, use_scale_shift_norm=True,
                    learn_sigma=True)

# DifFace configs/sample/iddpm_ffhq512_swinir.yaml (and configs/training/diffusion_ffhq512.yaml),
# `model.params` as written there (DifFace's UNetModel argument names), transcribed by hand
DIFFACE_MODEL_PARAMS = {
    "image_size": 512, "in_channels": 3, "model_channels": 32, "out_channels": 6,
    "attention_resolutions": [32, 16, 8], "dropout": 0, "channel_mult": [1, 2, 4, 8, 8, 16, 16],
    "num_res_blocks": [1, 2, 2, 2, 2, 3, 4], "conv_resample": True, "dims": 2, "use_fp16": False,
    "num_head_channels": 64, "use_scale_shift_norm": True, "resblock_updown": False,
    "use_new_attention_order": False}
DIFFACE_GD = GDConfig(image_size=512, num_channels=32, channel_mult=(1, 2, 4, 8, 8, 16, 16),
                      num_res_blocks=(1, 2, 2, 2, 2, 3, 4), attention_resolutions=(32, 16, 8),
                      num_head_channels=64, use_scale_shift_norm=True, learn_sigma=True)
# guided-diffusion README: 256x256_diffusion_uncond.pt (ImageNet, unconditional)
OPENAI_256_FLAGS = {"attention_resolutions": "32,16,8", "class_cond": False,
                    "diffusion_steps": 1000, "image_size": 256, "learn_sigma": True,
                    "noise_schedule": "linear", "num_channels": 256, "num_head_channels": 64,
                    "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True,
                    "use_scale_shift_norm": True}
OPENAI_256_GD = GDConfig(image_size=256, num_channels=256, num_res_blocks=2,
                         attention_resolutions=(32, 16, 8), num_heads=4, num_head_channels=64,
                         use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)


def guided_state_dict(cfg: GDConfig = FLAGS_GD, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in guided-diffusion's own layout (from gd_layout, not from flipnet)."""
    return random_state(cfg, seed=seed)


NO_MISMATCH = {"unused": [], "unfilled": [], "shapes": {}}


def layout_mismatches(flags: dict, cfg: GDConfig) -> dict:
    """On ``meta`` tensors: what of the real layout does not convert to flipnet's keys and shapes
    (``NO_MISMATCH`` when it maps exactly; flipnet's own strict load then runs too)."""
    unet_cfg, _, extras = configs_from_flags(flags)
    with torch.device("meta"):
        model = UNet(unet_cfg)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = convert_guided_state(random_state(cfg, device="meta"), model,
                                     new_attention_order=extras["new_attention_order"])
    got = {k: tuple(v.shape) for k, v in converted.items()}
    found = {"unused": sorted(set(got) - set(own)),  # in the file, not used by flipnet
             "unfilled": sorted(set(own) - set(got)),  # flipnet parameters the file lacks
             "shapes": {k: s for k, s in got.items() if k in own and own[k] != s}}
    if found == NO_MISMATCH:
        load_into(model, converted, "meta")  # flipnet's own strict check agrees
    return found


def test_difface_ffhq512_real_layout_maps_onto_flipnet():
    """DifFace's FFHQ-512 prior (iddpm_ffhq512_ema500000.pth): 630 tensors, 159.8M values, every
    one used by flipnet and every flipnet parameter filled (out.2 keeps 3 of its 6 channels)."""
    layout = guided_layout(DIFFACE_GD)
    assert len(layout) == 630
    assert sum(math.prod(s) for _, s in layout) == 159_788_454
    shapes = dict(layout)  # spot checks against the module tree read in unet.py
    assert shapes["input_blocks.0.0.weight"] == (32, 3, 3, 3)
    assert shapes["time_embed.0.weight"] == (128, 32)
    assert shapes["input_blocks.3.0.skip_connection.weight"] == (64, 32, 1, 1)
    assert "input_blocks.4.0.skip_connection.weight" not in shapes  # 64 -> 64: Identity
    assert shapes["input_blocks.3.0.emb_layers.1.weight"] == (128, 128)  # 2C: scale-shift
    assert shapes["input_blocks.2.0.op.weight"] == (32, 32, 3, 3)  # conv Downsample
    assert shapes["input_blocks.12.1.qkv.weight"] == (768, 256, 1)  # 32 px level, 4 heads
    assert shapes["middle_block.1.proj_out.weight"] == (512, 512, 1)
    assert shapes["output_blocks.4.2.conv.weight"] == (512, 512, 3, 3)  # Upsample
    assert shapes["output_blocks.0.0.in_layers.0.weight"] == (1024,)  # 512 + skip 512
    assert shapes["out.2.weight"] == (6, 32, 3, 3)
    assert sum(k.endswith(".qkv.weight") for k in shapes) == 22
    # flipnet's preset is that yaml (architecture + its diffusion section)
    assert {k: PRESETS["difface-ffhq512"][k] for k in DIFFACE_MODEL_PARAMS
            if k not in ("dims", "use_fp16")} == {
        k: v for k, v in DIFFACE_MODEL_PARAMS.items() if k not in ("dims", "use_fp16")}
    assert layout_mismatches(PRESETS["difface-ffhq512"], DIFFACE_GD) == NO_MISMATCH
    assert layout_mismatches(DIFFACE_MODEL_PARAMS, DIFFACE_GD) == NO_MISMATCH  # the yaml's


@pytest.mark.parametrize("flags,cfg", [
    (OPENAI_256_FLAGS, OPENAI_256_GD),  # resblock up/down
    # DifFace configs/sample/difface_inpainting_lama256.yaml (iddpm_ffhq256_ema750000.pth)
    ({**DIFFACE_MODEL_PARAMS, "image_size": 256, "model_channels": 128,
      "attention_resolutions": [16, 8], "channel_mult": [1, 1, 2, 2, 4, 4], "num_res_blocks": 2},
     GDConfig(image_size=256, num_channels=128, channel_mult=(1, 1, 2, 2, 4, 4),
              num_res_blocks=2, attention_resolutions=(16, 8), num_head_channels=64,
              use_scale_shift_norm=True, learn_sigma=True)),
    ({**OPENAI_256_FLAGS, "resblock_updown": False, "use_scale_shift_norm": False,
      "learn_sigma": False, "num_head_channels": -1, "image_size": 512},
     replace(OPENAI_256_GD, image_size=512, resblock_updown=False, use_scale_shift_norm=False,
             learn_sigma=False, num_head_channels=-1)),  # 512 default mult has 0.5
    ({"image_size": 64, "num_channels": 64, "attention_resolutions": "16,8", "num_heads": 4},
     GDConfig(image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions=(16, 8),
              num_heads=4, use_scale_shift_norm=True)),  # script_util defaults otherwise
    # UNetModel argument names with its defaults (no use_scale_shift_norm given -> False)
    ({"image_size": 32, "model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
      "attention_resolutions": [16]},
     GDConfig(image_size=32, num_channels=32, channel_mult=(1, 2), num_res_blocks=1,
              attention_resolutions=(16,))),
], ids=["openai-256-uncond", "difface-ffhq256", "512-default-mult", "script-defaults", "unetmodel-defaults"])
def test_real_layouts_map_onto_flipnet(flags, cfg):
    assert layout_mismatches(flags, cfg) == NO_MISMATCH


# A DifFace-FFHQ-512-shaped network small enough to run: the same 7 levels and per-level block
# counts, widths changing at the same levels, attention on the 3 deepest levels (4, 2, 1 px of a
# 64 px input instead of 32, 16, 8 of 512), 32-channel heads so every attention block has 4-5.
SMALL_DIFFACE = {**DIFFACE_MODEL_PARAMS, "image_size": 64, "channel_mult": [1, 2, 3, 4, 4, 5, 5],
                 "attention_resolutions": [4, 2, 1], "num_head_channels": 32}
SMALL_DIFFACE_GD = replace(DIFFACE_GD, image_size=64, channel_mult=(1, 2, 3, 4, 4, 5, 5),
                           attention_resolutions=(4, 2, 1), num_head_channels=32)
# resblock up/down, no scale-shift, num_heads (not per-head width), no learned sigma
SMALL_UPDOWN = {"image_size": 32, "num_channels": 32, "channel_mult": "1,1,2,2",
                "num_res_blocks": 1, "attention_resolutions": "16,8", "num_heads": 2,
                "resblock_updown": True, "use_scale_shift_norm": False, "learn_sigma": False}
SMALL_UPDOWN_GD = GDConfig(image_size=32, num_channels=32, channel_mult=(1, 1, 2, 2),
                           num_res_blocks=1, attention_resolutions=(16, 8), num_heads=2,
                           resblock_updown=True)


@pytest.mark.parametrize("flags,cfg,new_order", [
    (FLAGS, FLAGS_GD, False), (FLAGS, FLAGS_GD, True),
    (SMALL_DIFFACE, SMALL_DIFFACE_GD, False),
    (SMALL_UPDOWN, SMALL_UPDOWN_GD, False), (SMALL_UPDOWN, SMALL_UPDOWN_GD, True),
], ids=["tiny-legacy", "tiny-new-order", "difface-shaped", "updown-legacy", "updown-new-order"])
def test_guided_diffusion_checkpoint_matches_reference_forward(tmp_path, flags, cfg, new_order):
    """A file in the real layout loads strictly and the prior equals guided-diffusion's forward."""
    flags = {**flags, "use_new_attention_order": new_order}
    sd = guided_state_dict(cfg)
    torch.save(sd, tmp_path / "model.pt")
    prior = load_prior(tmp_path / "model.pt", flags=flags)
    assert prior.kind == "guided-diffusion" and prior.schedule.prediction == "eps"
    size = cfg.image_size
    assert prior.image_size == size
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, size, size, generator=g), torch.tensor([3, 777])
    with torch.no_grad():
        expected = reference_forward(sd, cfg, x, t, new_order=new_order)[:, :3]  # eps
        got = prior.model(x, t)
        # the other head order gives a different network: the order really matters here
        wrong = reference_forward(sd, cfg, x, t, new_order=not new_order)[:, :3]
    assert got.shape == (2, 3, size, size)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_guided_flags_sidecar_json_and_mismatch_errors(tmp_path):
    sd = guided_state_dict(FLAGS_GD)
    torch.save(sd, tmp_path / "prior.pth")
    (tmp_path / "prior.json").write_text(json.dumps(FLAGS))
    prior = load_prior(tmp_path / "prior.pth")
    s = make_schedule(prior.schedule)
    assert s.num_timesteps == 1000 and s.betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(WeightsError, match="prior.pth"):
        load_prior(tmp_path / "prior.pth", flags={**FLAGS, "num_channels": 64})


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="evil.pt.*pickled objects are refused"):
        load_prior(tmp_path / "evil.pt", flags=FLAGS)


def test_difface_preset_architecture():
    unet_cfg, sched, extras = configs_from_flags(PRESETS["difface-ffhq512"])
    assert extras["learn_sigma"] and not extras["new_attention_order"]
    assert sched.beta_schedule == "linear" and sched.num_timesteps == 1000
    with torch.device("meta"):
        model = UNet(unet_cfg)
    assert len(model.input_blocks) == 1 + sum(unet_cfg.res_blocks()) + 6
    assert model.out[-1].weight.shape[0] == 3
    n_attn = sum(1 for k in model.state_dict() if k.endswith("attn1.to_q.weight"))
    assert n_attn == (2 + 3 + 4) + (3 + 4 + 5) + 1  # 32/16/8 px levels: down, up, middle


@pytest.mark.parametrize("schedule,prediction,ours", [
    ("squaredcos_cap_v2", "v_prediction", ("cosine", "v")),
    ("linear", "epsilon", ("linear", "eps"))])
def test_diffusers_unet2d_folder(tmp_path, schedule, prediction, ours):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32).eval()
    unet.save_pretrained(tmp_path / "unet")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule,
                                    prediction_type=prediction)
    sched.save_pretrained(tmp_path / "scheduler")
    prior = load_prior(tmp_path)
    assert prior.kind == "diffusers" and prior.image_size == 16
    assert (prior.schedule.beta_schedule, prior.schedule.prediction) == ours
    ours_abar = make_schedule(prior.schedule).alphas_cumprod.float()
    assert torch.allclose(ours_abar, sched.alphas_cumprod.float(), atol=2e-5)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 600])
    with torch.no_grad():
        assert torch.allclose(prior.model(x, t), unet(x, t).sample, atol=1e-5)
    assert load_prior(tmp_path / "unet").kind == "diffusers"  # the unet folder alone also works


def test_flipnet_on_a_guided_diffusion_checkpoint(tmp_path):
    """Issue 17: a public checkpoint is a full prior config, so FLIPNET can sit on it; the
    FLIPNET folder records the checkpoint path (and flags) and reopens it from there."""
    from flipnet.errors import WeightsError
    from flipnet.models.face_embedding import FaceEmbeddingConfig
    from flipnet.models.flipnet import FlipNetConfig, build_flipnet, load_flipnet, save_flipnet

    torch.save(guided_state_dict(FLAGS_GD), tmp_path / "model.pt")
    prior = load_prior(tmp_path / "model.pt", flags=FLAGS)  # no sidecar: flags given here
    unet_cfg, sched, _ = configs_from_flags(FLAGS)
    assert prior.config is not None and prior.config.unet == unet_cfg
    assert prior.config.schedule == sched
    cfg = FlipNetConfig(embedding=FaceEmbeddingConfig(image_size=16, channels=(8, 16), tokens=4,
                                                      dim=16), lora_rank=2)
    net = build_flipnet(cfg, prior=prior).eval()
    assert net.config.prior == str(tmp_path / "model.pt")
    g = torch.Generator().manual_seed(2)
    x, c, t = (torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g),
               torch.tensor([5, 600]))
    with torch.no_grad():  # a fresh FLIPNET is the prior, on both streams
        expected = prior.model(torch.cat([x, c]), torch.cat([t, t]))
        got = torch.cat(net(x, c, t, mode="restore", context_image=c))
        assert torch.allclose(got, expected, atol=1e-5)
        for p in net.trainable_parameters():
            p.add_(0.01)  # adapters that do something
        for v in net.adapter_state_dict().values():
            v.copy_(v.half().float())  # fp16-exact, as stored (the prior stays fp32)
        save_flipnet(tmp_path / "flipnet", net)
        loaded = load_flipnet(tmp_path / "flipnet")
        a = loaded(x, c, t, mode="degrade", context_image=c)
        b = net(x, c, t, mode="degrade", context_image=c)
    assert loaded.prior_config == prior.config and loaded.config == net.config
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    frozen = {k: v for k, v in loaded.unet.state_dict().items() if k in loaded.frozen_keys}
    ours = net.unet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in frozen.items())  # the prior, reread exactly
    (tmp_path / "model.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(WeightsError, match=r"model\.pt"):
        load_flipnet(tmp_path / "flipnet")
