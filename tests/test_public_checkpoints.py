"""Public checkpoint loading: guided-diffusion state dicts (checked against an independent reference
forward written from guided-diffusion's code) and diffusers UNet2DModel folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import WeightsError
from flipnet.models.prior import load_prior
from flipnet.models.public_checkpoints import PRESETS, configs_from_flags
from flipnet.models.unet import UNet

FLAGS = {"image_size": 16, "num_channels": 32, "channel_mult": "1,2", "num_res_blocks": 1,
         "attention_resolutions": "8", "num_head_channels": 32, "learn_sigma": True,
         "diffusion_steps": 1000, "noise_schedule": "linear", "use_scale_shift_norm": True}


# ---- reference: guided-diffusion's UNetModel forward, written directly on its state-dict keys


def ref_timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ref_resblock(sd, p, x, emb):
    h = F.conv2d(F.silu(F.group_norm(x, 32, sd[f"{p}.in_layers.0.weight"],
                                     sd[f"{p}.in_layers.0.bias"])),
                 sd[f"{p}.in_layers.2.weight"], sd[f"{p}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{p}.emb_layers.1.weight"], sd[f"{p}.emb_layers.1.bias"])
    scale, shift = e[:, :, None, None].chunk(2, dim=1)
    h = F.group_norm(h, 32, sd[f"{p}.out_layers.0.weight"], sd[f"{p}.out_layers.0.bias"])
    h = F.conv2d(F.silu(h * (1 + scale) + shift), sd[f"{p}.out_layers.3.weight"],
                 sd[f"{p}.out_layers.3.bias"], padding=1)
    skip = x if f"{p}.skip_connection.weight" not in sd else F.conv2d(
        x, sd[f"{p}.skip_connection.weight"], sd[f"{p}.skip_connection.bias"])
    return skip + h


def ref_attention(sd, p, x, heads, new_order):
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(F.group_norm(x, 32, sd[f"{p}.norm.weight"], sd[f"{p}.norm.bias"]),
                   sd[f"{p}.qkv.weight"], sd[f"{p}.qkv.bias"])
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    scale = 1 / math.sqrt(math.sqrt(ch))
    if new_order:  # QKVAttention
        q, k, v = qkv.chunk(3, dim=1)
        q, k, v = (z.reshape(bs * heads, ch, length) for z in (q, k, v))
    else:  # QKVAttentionLegacy
        q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)
    h = F.conv1d(a, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"])
    return (x + h).reshape(b, c, hh, ww)


def ref_sequential(sd, prefix, h, emb, new_order):
    j = 0
    while any(k.startswith(f"{prefix}.{j}.") for k in sd):
        p = f"{prefix}.{j}"
        if f"{p}.weight" in sd:
            h = F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], padding=1)
        elif f"{p}.in_layers.0.weight" in sd:
            h = ref_resblock(sd, p, h, emb)
        elif f"{p}.qkv.weight" in sd:
            h = ref_attention(sd, p, h, h.shape[1] // 32, new_order)
        elif f"{p}.op.weight" in sd:
            h = F.conv2d(h, sd[f"{p}.op.weight"], sd[f"{p}.op.bias"], stride=2, padding=1)
        elif f"{p}.conv.weight" in sd:
            h = F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"),
                         sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], padding=1)
        j += 1
    return h


def ref_forward(sd, x, t, new_order):
    emb = ref_timestep_embedding(t, 32)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
    n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))
    hs, h = [], x
    for i in range(n_in):
        h = ref_sequential(sd, f"input_blocks.{i}", h, emb, new_order)
        hs.append(h)
    h = ref_sequential(sd, "middle_block", h, emb, new_order)
    for i in range(n_out):
        h = ref_sequential(sd, f"output_blocks.{i}", torch.cat([h, hs.pop()], 1), emb, new_order)
    h = F.silu(F.group_norm(h, 32, sd["out.0.weight"], sd["out.0.bias"]))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)


def guided_state_dict(flags, seed=0):
    """Random tensors in guided-diffusion's key layout (qkv/proj_out conv1d, 6 output channels)."""
    unet_cfg, _, _ = configs_from_flags(flags)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in UNet(unet_cfg).state_dict().items():
        shape = tuple(v.shape)
        for ours, theirs in (("attn1.to_q", "qkv"), ("attn1.to_out", "proj_out")):
            if ours in k:
                k = k.replace(ours, theirs)
                shape = ((3 * shape[0],) if theirs == "qkv" else (shape[0],)) + shape[1:]
                shape = shape + (1,) if len(shape) == 2 else shape
        if "attn1.to_k" in k or "attn1.to_v" in k:
            continue
        if k.startswith("out.2."):
            shape = (6,) + shape[1:]
        sd[k] = torch.randn(shape, generator=g) * 0.2
    return sd


@pytest.mark.parametrize("new_order", [False, True])
def test_guided_diffusion_checkpoint_matches_reference_forward(tmp_path, new_order):
    flags = {**FLAGS, "use_new_attention_order": new_order}
    sd = guided_state_dict(flags)
    torch.save(sd, tmp_path / "model.pt")
    prior = load_prior(tmp_path / "model.pt", flags=flags)
    assert prior.kind == "guided-diffusion" and prior.schedule.prediction == "eps"
    assert prior.image_size == 16
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 777])
    expected = ref_forward(sd, x, t, new_order)[:, :3]  # learn_sigma: first 3 = eps
    got = prior.model(x, t)
    assert got.shape == (2, 3, 16, 16)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    # the other head order gives a different network: the order really matters here
    wrong = ref_forward(sd, x, t, not new_order)[:, :3]
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_guided_flags_sidecar_json_and_mismatch_errors(tmp_path):
    sd = guided_state_dict(FLAGS)
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

    torch.save(guided_state_dict(FLAGS), tmp_path / "model.pt")
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
