"""FLIPNET issue 17: (2) the LQ FLIPNET trains on is the LQ it sees at inference (one helper,
``degradations.model_lq``); (4) a learned mode embedding tells the network which mode it runs in
(zero at first, trained, saved; folders from before it load and sample as they did)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny_flipnet import TINY_EMB, TINY_PRIOR, one_thread, tiny_prior  # noqa: F401 (fixture)
from torch import nn

from flipnet.diffusion.flipnet_sampling import flipnet_restore
from flipnet.diffusion.schedules import make_schedule
from flipnet.io import save_image, to_tensor, to_uint8
from flipnet.models.flipnet import FlipNet, FlipNetConfig, load_flipnet, save_flipnet
from flipnet.models.prior import save_prior
from flipnet.training.flipnet import mode_loss

# --- defect 2: one LQ for training and inference --------------------------------------------

class _SpyNet(nn.Module):
    """Duck-typed FLIPNET that records the condition image the sampler hands it."""

    def __init__(self, size: int):
        super().__init__()
        self.prior_config = dataclasses.replace(
            TINY_PRIOR, unet=dataclasses.replace(TINY_PRIOR.unet, image_size=size))
        self.config = FlipNetConfig()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = []
        self.image_size, self.factor = size, 1  # a pixel prior: the streams are the images

    def encode(self, x):
        return x

    def decode(self, z):
        return z

    def context(self, image, mode):
        self.seen.append(image.clone())

    def forward(self, xt, xc, t, **kw):
        return torch.zeros_like(xt), torch.zeros_like(xc)


def _face_crop(size: int = 128) -> np.ndarray:
    """A smooth uint8 (size, size, 3) test image (edges and flat areas, like a face crop)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(7 * x) * 0.5 + 0.5, (x * y), np.cos(5 * y) * 0.5 + 0.5], -1)
    rgb[size // 3: size // 2, size // 4: size // 2] = 0.1
    return (rgb * 255).round().astype(np.uint8)


@pytest.mark.parametrize("preset", ["gfpgan", "codeformer"])
def test_training_lq_is_the_lq_flipnet_sees_at_inference(tmp_path, preset):
    """Same 128 px crop, same seed: the trainers' LQ == the bench set's LQ after the sampler's
    resize to the model size (today: degraded at 64 px versus degraded at 128 px, shrunk)."""
    from flipnet.pipelines.bench import degrade_set
    from flipnet.training.face_embedding import model_lq_pairs

    crop, seed, model_size = _face_crop(), 1234, 64
    save_image(tmp_path / "hq" / "f0.png", crop)
    # training path (FLIPNET restore mode and the embedder use the same data)
    data = model_lq_pairs(tmp_path / "hq", (preset,), model_size=model_size, split="all",
                          progress=False)
    lq_train, hq_train = data[(0, False, seed)]
    # inference path: the bench set (8-bit LQ at the crop size), restored by FLIPNET
    lq_bench, _ = degrade_set(to_tensor(crop[None]), preset, seed)
    spy = _SpyNet(model_size)
    flipnet_restore(spy, to_tensor(to_uint8(lq_bench)), steps=2, seed=0)
    assert lq_train.shape == (3, model_size, model_size) == hq_train.shape
    assert torch.equal(lq_train, spy.seen[0][0])


def test_model_lq_batch_equals_single():
    from flipnet.degradations.model_lq import model_lq

    crops = to_tensor(np.stack([_face_crop(), _face_crop()[::-1].copy()]))
    both, params = model_lq(crops, "difface", model_size=32, seed=5)
    one, _ = model_lq(crops[1:], "difface", model_size=32, seed=6)
    assert both.shape == (2, 3, 32, 32) and len(params) == 2 and torch.equal(both[1:], one)


# --- defect 4: the mode embedding -----------------------------------------------------------



def _net(**kw) -> FlipNet:
    cfg = FlipNetConfig(embedding=TINY_EMB, lora_rank=2, **kw)
    return FlipNet(cfg, TINY_PRIOR, prior_state=tiny_prior().state_dict())


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(b, 3, 16, 16, generator=g), torch.randn(b, 3, 16, 16, generator=g)
    return x, c, torch.tensor([3, 70][:b])


def _set_mode_embedding(net: FlipNet) -> None:
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        net.mode_embedding.weight.copy_(torch.randn(net.mode_embedding.weight.shape,
                                                    generator=g))


def test_modes_differ_without_face_embedding():
    """use_embedding=False: the same inputs in both modes; only the mode embedding tells them
    apart (the target stream's prediction changes, the condition stream's does not)."""
    net = _net(use_embedding=False, mode_embedding=True)
    _set_mode_embedding(net)
    x, c, t = _inputs()
    with torch.no_grad():
        r_target, r_cond = net(x, c, t, mode="restore")
        d_target, d_cond = net(x, c, t, mode="degrade")
    assert not torch.allclose(r_target, d_target)
    assert torch.equal(r_cond, d_cond)


@pytest.mark.parametrize("mode", ["restore", "degrade"])
def test_fresh_flipnet_with_mode_embedding_equals_prior(mode):
    prior, net = tiny_prior(), _net(mode_embedding=True)
    assert net.mode_embedding is not None
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        pred = net(x, c, t, mode=mode, context_image=c)
    assert torch.equal(torch.cat(pred), expected)


def test_mode_embedding_is_trainable_and_exported():
    net = _net(mode_embedding=True)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "mode_embedding.weight" in names
    assert "mode_embedding.weight" in net.adapter_state_dict()
    assert _net(mode_embedding=False).mode_embedding is None


def test_mode_embedding_save_load_round_trip(tmp_path):
    prior = tiny_prior()
    with torch.no_grad():
        for p in prior.parameters():
            p.copy_(p.half().float())
    save_prior(tmp_path / "prior-tiny", prior, TINY_PRIOR)
    net = FlipNet(FlipNetConfig(prior="prior-tiny", embedding=TINY_EMB, lora_rank=2,
                                mode_embedding=True), TINY_PRIOR, prior_state=prior.state_dict())
    _set_mode_embedding(net)
    with torch.no_grad():
        net.mode_embedding.weight.copy_(net.mode_embedding.weight.half().float())
    folder = save_flipnet(tmp_path / "flipnet-tiny", net)
    assert json.loads((folder / "config.json").read_text())["mode_embedding"] is True
    loaded = load_flipnet(folder)
    assert torch.equal(loaded.mode_embedding.weight, net.mode_embedding.weight)
    x, c, t = _inputs()
    with torch.no_grad():
        assert torch.equal(net.eval()(x, c, t, mode="degrade", context_image=c)[0],
                           loaded(x, c, t, mode="degrade", context_image=c)[0])


def test_old_folder_without_the_key_loads_without_mode_embedding(tmp_path):
    """A folder written before the mode embedding (no ``mode_embedding`` in config.json) loads
    as it was: no mode embedding, same outputs."""
    prior = tiny_prior()
    with torch.no_grad():
        for p in prior.parameters():
            p.copy_(p.half().float())
    save_prior(tmp_path / "prior-tiny", prior, TINY_PRIOR)
    net = FlipNet(FlipNetConfig(prior="prior-tiny", embedding=TINY_EMB, lora_rank=2,
                                mode_embedding=False), TINY_PRIOR, prior_state=prior.state_dict())
    folder = save_flipnet(tmp_path / "flipnet-old", net)
    raw = json.loads((folder / "config.json").read_text())
    del raw["mode_embedding"]
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = load_flipnet(folder)
    assert loaded.mode_embedding is None and loaded.config.mode_embedding is False
    x, c, t = _inputs()
    with torch.no_grad():
        assert torch.equal(net.eval()(x, c, t, mode="restore", context_image=c)[0],
                           loaded(x, c, t, mode="restore", context_image=c)[0])


def test_two_training_steps_change_the_mode_embedding():
    net = _net(mode_embedding=True)
    schedule = make_schedule(TINY_PRIOR.schedule)
    x, c, _ = _inputs(2)
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-3)
    before = net.mode_embedding.weight.detach().clone()
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        loss = (mode_loss(net, schedule, x, c, "restore", g)
                + mode_loss(net, schedule, x, c, "degrade", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.mode_embedding.weight.detach()
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[1], after[1])
