"""Pseudo targets and fine-tuning end to end with tiny random weights (CPU, seconds)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from flipnet.errors import FlipnetError
from flipnet.io import load_image, save_image
from flipnet.models.prior import save_prior
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.restorer import Restorer, RestorerConfig, save_restorer
from flipnet.models.unet import UNet, UNetConfig
from flipnet.pipelines.pseudo_targets import PseudoTargetConfig, make_pseudo_targets

TINY_PRIOR = PriorConfig(
    unet=UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), num_heads=2, norm_groups=8),
    schedule=ScheduleConfig(num_timesteps=100, beta_schedule="cosine", prediction="v"))
TINY_RESTORER = RestorerConfig(image_size=32, width=8, enc_blocks=(1, 1), middle_blocks=1,
                               dec_blocks=(1, 1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, astronaut):
    root = tmp_path_factory.mktemp("pt")
    torch.manual_seed(0)
    save_prior(root / "prior", UNet(TINY_PRIOR.unet), TINY_PRIOR)
    save_restorer(root / "restorer", Restorer(TINY_RESTORER), TINY_RESTORER)
    face = cv2.resize(astronaut[20:240, 120:340], (32, 32), interpolation=cv2.INTER_AREA)
    for i, person in enumerate(["Alan_A", "Alan_A", "Bob_B", "Ivy_I"]):
        save_image(root / "lfw-lq" / person / f"{person}_{i}.png", np.roll(face, i, axis=1))
    (root / "lfw-lq" / "Bob_B" / "broken.png").write_bytes(b"not a png")
    return root


def _cfg(root, **kw):
    return PseudoTargetConfig(restorer=str(root / "restorer"), prior=str(root / "prior"),
                              respaced_steps=20, t0=12, tau=5, device="cpu", **kw)


def test_pseudo_targets_written_resumable_and_seeded(setup):
    root = setup
    out = root / "out"
    with pytest.warns(UserWarning, match="broken.png"):
        r = make_pseudo_targets(root / "lfw-lq", out, _cfg(root), progress=False)
    assert r["count"] == 3  # train split: people A-H; Ivy_I is a test person
    names = sorted(p.name for p in (out / "target").iterdir())
    assert names == sorted(p.name for p in (out / "lq").iterdir()) and len(names) == 3
    t = load_image(out / "target" / names[0]).rgb
    assert t.shape == (32, 32, 3)
    settings = json.loads((out / "pseudo_targets.json").read_text())["settings"]
    assert settings["t0"] == 12 and settings["tau"] == 5
    # resume: nothing new; a deleted target is re-made identically (noise = seed + index)
    before = (out / "target" / names[1]).read_bytes()
    (out / "target" / names[1]).unlink()
    with pytest.warns(UserWarning):
        r2 = make_pseudo_targets(root / "lfw-lq", out, _cfg(root), progress=False)
    assert r2["count"] == 3
    assert (out / "target" / names[1]).read_bytes() == before


def test_pseudo_targets_refuse_output_inside_input(setup):
    with pytest.raises(FlipnetError, match="must not be the input"):
        make_pseudo_targets(setup / "lfw-lq", setup / "lfw-lq" / "x", _cfg(setup), progress=False)


def test_finetune_two_steps(setup, tmp_path):
    from flipnet.api import finetune
    from flipnet.models.restorer import load_restorer
    from flipnet.training.finetune import FinetuneConfig

    cfg = FinetuneConfig(restorer=str(setup / "restorer"), unlabeled=str(setup / "lfw-lq"),
                         out=str(tmp_path / "ft"), prior=str(setup / "prior"),
                         respaced_steps=20, t0=12, tau=5, steps=2, batch_size=2, device="cpu")
    with pytest.warns(UserWarning):
        folder = finetune(cfg)
    model, rcfg = load_restorer(folder)
    assert rcfg == TINY_RESTORER
    base, _ = load_restorer(setup / "restorer")
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                         base.state_dict().values()))
    assert changed


def test_pseudo_targets_limit_spreads_over_the_sorted_list(setup, tmp_path):
    # train files sorted: Alan_A_0, Alan_A_1, Bob_B_2, Bob_B/broken; limit 2 takes the first and
    # the last, not the first two (which would be one person only)
    with pytest.warns(UserWarning, match="broken.png"):
        r = make_pseudo_targets(setup / "lfw-lq", tmp_path / "o", _cfg(setup, limit=2),
                                progress=False)
    assert r["count"] == 1
    assert [p.name for p in (tmp_path / "o" / "target").iterdir()] == ["Alan_A__Alan_A_0.png"]
