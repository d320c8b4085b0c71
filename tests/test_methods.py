"""``make_method`` is strict (issue 19): an option a method does not use is a ConfigError naming
it; ``None`` means not given, so the diffusion methods keep their own defaults."""

from __future__ import annotations

import pytest
import torch

from flipnet.api import Restorer
from flipnet.errors import ConfigError, FlipnetError
from flipnet.models.prior import save_prior
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.unet import UNet, UNetConfig
from flipnet.pipelines import methods
from flipnet.pipelines.methods import BicubicMethod, make_method

TINY_PRIOR = PriorConfig(
    unet=UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), num_heads=2, norm_groups=8),
    schedule=ScheduleConfig(num_timesteps=100, beta_schedule="cosine", prediction="v"))


@pytest.fixture(scope="module")
def prior_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior") / "prior"
    torch.manual_seed(0)
    save_prior(folder, UNet(TINY_PRIOR.unet), TINY_PRIOR)
    return folder


@pytest.mark.parametrize("name, option, kind", [
    ("restorer", "steps", "a one-pass restorer"),
    ("finetuned", "fidelity", "a one-pass restorer"),
    ("bicubic", "seed", "a fixed baseline"),
    ("classical", "steps", "a fixed baseline"),
    ("input", "fidelity", "a fixed baseline"),
])
def test_an_unused_option_is_refused_by_name(name, option, kind):
    with pytest.raises(ConfigError, match=rf"^method '{name}' does not use --{option} "
                                          rf"\({kind}\); drop it$"):
        make_method(name, device="cpu", **{option: 1})


def test_baselines_take_no_weights_and_build_without_options():
    with pytest.raises(ConfigError, match="method 'bicubic' does not use --weights"):
        make_method("bicubic", "restorer-128")
    assert isinstance(make_method("bicubic", device="cpu"), BicubicMethod)


def test_backend_onnx_only_for_the_one_pass_restorers(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="method 'prior' has no onnx backend"):
        make_method("prior", backend="onnx")
    with pytest.raises(ConfigError, match="method 'bicubic' has no onnx backend"):
        make_method("bicubic", backend="onnx")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        make_method("restorer", backend="tensorrt")
    import flipnet.pipelines.onnx_method as onnx_method

    calls = []
    monkeypatch.setattr(onnx_method, "OnnxRestorerMethod",
                        lambda folder, **kw: calls.append((folder, kw)) or "onnx")
    assert make_method("finetuned", str(tmp_path), backend="onnx", batch_size=4,
                       device="cpu") == "onnx"
    assert calls == [(tmp_path, {"name": "finetuned", "batch_size": 4, "device": "cpu"})]


def test_diffusion_methods_take_their_defaults_when_not_given(prior_folder):
    plain = make_method("prior", str(prior_folder), device="cpu")
    assert (plain.cfg.respaced_steps, plain.cfg.seed) == (50, 0)
    assert plain.cfg.t0 == round(50 * 0.6)  # fidelity 0.5
    given = make_method("prior", str(prior_folder), device="cpu", steps=20, seed=3, fidelity=1.0)
    assert (given.cfg.respaced_steps, given.cfg.seed, given.cfg.t0) == (20, 3, 8)


def test_factories_pass_only_what_each_method_uses(monkeypatch):
    seen = {}
    monkeypatch.setitem(methods.METHODS, "prior",
                        lambda weights, **kw: seen.update(kw) or "prior")
    make_method("prior", device="cpu", seed=2)
    assert seen == {"device": "cpu", "batch_size": 16, "seed": 2}


def test_api_restorer_load_is_strict_too():
    with pytest.raises(ConfigError, match="method 'bicubic' does not use --steps"):
        Restorer.load("bicubic", steps=5)
    assert Restorer.load("bicubic", device="cpu", upscale=2.0).upscale == 2.0


def test_finetune_on_pairs_needs_the_pseudo_targets(tmp_path):
    from flipnet.training.finetune import FinetuneConfig, finetune_on_pairs

    with pytest.raises(FlipnetError, match="no target/ folder of pseudo targets"):
        finetune_on_pairs(FinetuneConfig(out=str(tmp_path / "ft")), tmp_path / "none")
