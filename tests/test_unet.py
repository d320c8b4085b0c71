"""UNet denoiser: shapes, the cross-attention slot, swappable processors, LoRA targets, save/load."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from flipnet.errors import ConfigError, WeightsError
from flipnet.models.attention import Attention, AttnProcessor
from flipnet.models.prior import load_prior, save_prior
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.unet import UNet, UNetConfig

TINY = UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_resolutions=(8,), num_heads=2, norm_groups=8)


def _randomise(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every parameter (including zero-initialised ones) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _inputs(batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g), torch.tensor([5, 900][:batch])


def test_unet_output_shape_and_no_cross_modules_by_default():
    model = _randomise(UNet(TINY)).eval()
    x, t = _inputs()
    y = model(x, t)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert not any("attn2" in k for k in model.state_dict())
    # the timestep matters, and a scalar t equals a broadcast batch of it
    assert not torch.allclose(model(x, torch.tensor([5, 5])), model(x, torch.tensor([900, 900])))
    assert torch.allclose(model(x, 7), model(x, torch.tensor([7, 7])))


def test_unet_fresh_model_predicts_zero():
    # the output conv starts at zero, like guided-diffusion
    x, t = _inputs()
    assert torch.count_nonzero(UNet(TINY)(x, t)) == 0


def test_cross_attention_slot_starts_as_identity_then_uses_context():
    cfg = dataclasses.replace(TINY, cross_attention_dim=12)
    plain = _randomise(UNet(TINY)).eval()
    crossed = UNet(cfg).eval()
    missing, unexpected = crossed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(("attn2" in k or "norm_cross" in k) for k in missing)
    x, t = _inputs()
    context = torch.randn(2, 5, 12)  # (B, T, D) tokens
    y_plain = plain(x, t)
    assert torch.allclose(crossed(x, t, context), y_plain, atol=1e-6)
    assert torch.allclose(crossed(x, t), y_plain, atol=1e-6)
    # once the zero-initialised output projection is trained, context changes the result
    for name, p in crossed.named_parameters():
        if "attn2.to_out" in name:
            nn.init.normal_(p, std=0.5)
    assert not torch.allclose(crossed(x, t, context), y_plain, atol=1e-4)


class _ScaledProcessor(nn.Module):
    """A processor with its own parameter: default attention times a learnable factor."""

    def __init__(self):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(3.0))
        self.calls = 0

    def forward(self, attn, hidden_states, context=None, **kwargs):
        self.calls += 1
        return self.factor * AttnProcessor()(attn, hidden_states, context)


def test_set_attn_processor_swaps_and_restores():
    model = _randomise(UNet(TINY)).eval()
    x, t = _inputs()
    base = model(x, t)
    names = list(model.attn_processors)
    assert names and all(n.endswith(".processor") for n in names)
    proc = _ScaledProcessor()
    model.set_attn_processor(proc)
    changed = model(x, t)
    assert proc.calls == len(names)
    assert not torch.allclose(changed, base)
    assert any(k.endswith("processor.factor") for k in model.state_dict())
    model.set_attn_processor({n: AttnProcessor() for n in names})
    assert torch.allclose(model(x, t), base)
    with pytest.raises(ConfigError, match="no attention module"):
        model.set_attn_processor({"nope.processor": AttnProcessor()})


def test_processor_receives_cross_attention_kwargs():
    seen = []

    def proc(attn, hidden_states, context=None, **kwargs):
        seen.append(kwargs.get("stream"))
        return AttnProcessor()(attn, hidden_states, context)

    model = UNet(TINY).eval()
    model.set_attn_processor(proc)
    x, t = _inputs()
    model(x, t, cross_attention_kwargs={"stream": "cond"})
    assert seen and set(seen) == {"cond"}


def test_attention_projections_are_named_linears_for_lora():
    peft = pytest.importorskip("peft")
    model = _randomise(UNet(TINY)).eval()
    x, t = _inputs()
    base = model(x, t)
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert all(isinstance(getattr(a, n), nn.Linear) for a in attn
               for n in ("to_q", "to_k", "to_v", "to_out"))
    lora = peft.get_peft_model(model, peft.LoraConfig(
        r=4, target_modules=["to_q", "to_k", "to_v", "to_out"]))
    n_lora = sum(1 for k in lora.state_dict() if "lora_A" in k)
    assert n_lora == 4 * len(attn)
    assert torch.allclose(lora(x, t), base, atol=1e-6)  # LoRA B starts at zero


def test_prior_folder_round_trip(tmp_path):
    cfg = PriorConfig(unet=TINY, schedule=ScheduleConfig(beta_schedule="linear", prediction="eps"))
    model = _randomise(UNet(TINY)).half().float().eval()  # values representable in fp16
    save_prior(tmp_path / "p", model, cfg)
    assert (tmp_path / "p" / "config.json").is_file()
    prior = load_prior(tmp_path / "p")
    assert prior.kind == "flipnet" and prior.config == cfg and prior.schedule == cfg.schedule
    x, t = _inputs()
    assert torch.equal(prior.model(x, t), model(x, t))


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="norm_groups"):
        UNet(dataclasses.replace(TINY, norm_groups=5))
    with pytest.raises(ConfigError, match="divisible"):
        UNet(dataclasses.replace(TINY, image_size=17))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="empty"):
        load_prior(tmp_path / "empty")
    with pytest.raises(WeightsError, match="not found"):
        load_prior(tmp_path / "missing")


@pytest.mark.parametrize("cfg", [TINY, UNetConfig(),
                                 dataclasses.replace(TINY, cross_attention_dim=24)])
def test_parameter_estimate_is_close_to_the_real_count(cfg):
    real = sum(p.numel() for p in UNet(cfg).parameters())
    assert abs(cfg.parameter_estimate() - real) < 0.1 * real


def test_largest_public_checkpoint_architectures_are_inside_the_limits():
    from flipnet.models.public_checkpoints import PRESETS, configs_from_flags

    gd = {"num_channels": 256, "num_res_blocks": 2, "attention_resolutions": "32,16,8",
          "num_head_channels": 64, "learn_sigma": True, "resblock_updown": True}
    for flags in [*PRESETS.values(), {**gd, "image_size": 256}, {**gd, "image_size": 512}]:
        unet, _, _ = configs_from_flags(flags)
        unet.validate()
        with torch.device("meta"):  # counts parameters without allocating them
            real = sum(p.numel() for p in UNet(unet).parameters())
        assert 1e8 < real < 0.5 * 3_000_000_000
        assert abs(unet.parameter_estimate() - real) < 0.15 * real


@pytest.mark.parametrize("changes, message", [
    ({"model_channels": 10**6}, r"model_channels = 1000000 is out of range \(1 to 2048\)"),
    ({"num_res_blocks": 10**6}, "num_res_blocks = 1000000"),
    ({"channel_mult": (1,) * 20, "image_size": 2**19}, "image_size"),
    ({"channel_mult": (1,) * 20}, r"levels .* out of range \(1 to 10\)"),
    ({"channel_mult": (1, 1024)}, r"channels of a level .* = 16384"),
    ({"norm_groups": 0}, "norm_groups = 0"),
    ({"num_heads": 0}, "num_heads = 0"),
    ({"dropout": 1.5}, "dropout"),
    ({"in_channels": 0}, "in_channels = 0"),
    ({"model_channels": 2048, "channel_mult": (1, 2, 4, 4), "num_res_blocks": 32,
      "image_size": 64}, "parameters, over the limit"),
])
def test_out_of_range_settings_are_refused_before_allocating(changes, message):
    cfg = dataclasses.replace(TINY, **changes)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
