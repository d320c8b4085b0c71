"""Issue 17 (FLIPNET): fine-tuning keeps the source's embedder exactly, phi is per call (two
threads sampling at once), face tokens once per image, serve keeps one FLIPNET for all
fidelities, and one pair writer takes a restorer or a FLIPNET folder."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from tiny_flipnet import (  # noqa: F401 (fixture)
    TINY_EMB,
    TINY_PRIOR,
    one_thread,
    tiny_prior,
    write_train_inputs,
)

from flipnet.diffusion.flipnet_sampling import flipnet_restore, sample_flipnet
from flipnet.errors import ConfigError
from flipnet.models.flipnet import FlipNet, FlipNetConfig, load_flipnet, save_flipnet
from flipnet.models.prior import save_prior
from flipnet.models.unet import UNet
from flipnet.weights import load_state_dict


def _fp16_exact(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())


def _trained_net(prior_name: str, prior: UNet) -> FlipNet:
    """A FLIPNET with random adapters and a perturbed (non-initial) embedder."""
    net = FlipNet(FlipNetConfig(prior=prior_name, embedding=TINY_EMB, lora_rank=2,
                                lora_alpha=2.0), TINY_PRIOR, prior_state=prior.state_dict())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for p in net.embedder.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    _fp16_exact(net)
    return net.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """prior, a trained-looking FLIPNET folder, a tiny restorer, 6 HQ + 6 real LQ faces."""

    root = tmp_path_factory.mktemp("flipnet-defects")
    prior = tiny_prior(fp16_exact=True)
    save_prior(root / "prior", prior, TINY_PRIOR)
    net = _trained_net("prior", prior)
    save_flipnet(root / "flipnet", net)
    write_train_inputs(root)
    return root, net


# --- 1: fine-tuning from a FLIPNET folder keeps its embedder (and the frozen rest) exactly ---


def test_init_from_export_carries_the_source_embedder_bit_for_bit(setup, tmp_path):
    from flipnet.training.flipnet import FlipNetTrainConfig, train_flipnet

    root, net = setup
    cfg = FlipNetTrainConfig(
        data_dir=str(root / "hq"), split="all", real_lq_dir=str(root / "real_lq"),
        pairs_dir=str(tmp_path / "pairs"), pseudo_restorer=str(root / "restorer"),
        out_dir=str(tmp_path / "tuned"), embedder=None, init_from=str(root / "flipnet"),
        presets=("gfpgan",),  # a new sampling default start is no architecture change
        flipnet=dataclasses.replace(net.config, prior=str(root / "prior"), start=0.5),
        batch_size=2, lr=1e-3, warmup_steps=0,
        steps=2, save_every=2, sample_every=0, sample_count=2, sample_steps=2, log_every=1,
        seed=1, threads=1)
    other = dataclasses.replace(cfg, out_dir=str(tmp_path / "other"),
                                flipnet=dataclasses.replace(cfg.flipnet, lora_rank=8))
    with pytest.raises(ConfigError, match="its FlipNetConfig differs"):
        train_flipnet(other)
    out = train_flipnet(cfg)
    assert load_flipnet(out).config.start == 0.5
    source, tuned = load_state_dict(root / "flipnet"), load_state_dict(out)
    assert source.keys() == tuned.keys()
    emb = [k for k in source if k.startswith("embedder.")]
    assert emb and all(torch.equal(source[k], tuned[k]) for k in emb)
    adapters = [k for k in source if "lora_" in k or ".processor." in k]
    assert any(not torch.equal(source[k], tuned[k]) for k in adapters)  # it did train


# --- 7: phi per call, tokens once per image ---------------------------------------------------


def test_two_threads_with_different_phi_match_their_single_runs(setup):
    """Both threads step in lock-step (a barrier before every UNet call), so a phi set on the
    shared modules by one of them would reach the other's sampling."""
    _, net = setup
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    fidelities = (0.1, 0.9)
    alone = {f: flipnet_restore(net, lq, fidelity=f, steps=4, seed=7) for f in fidelities}
    assert not torch.equal(alone[0.1], alone[0.9])
    barrier = threading.Barrier(2, timeout=30)

    def lock_step(*_):
        barrier.wait()

    hook = net.unet.register_forward_pre_hook(lock_step)
    got, errors = {}, []

    def work(f):
        try:
            got[f] = flipnet_restore(net, lq, fidelity=f, steps=4, seed=7)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            barrier.abort()

    try:
        threads = [threading.Thread(target=work, args=(f,)) for f in fidelities]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        hook.remove()
    assert not errors, errors
    for f in fidelities:
        assert torch.equal(got[f], alone[f]), f
    hubs = [m for m in net.modules() if type(m).__name__ == "BoostHubProcessor"]
    assert hubs and all(h.phi == net.config.phi for h in hubs)  # no shared state changed


def test_face_tokens_are_computed_once_per_sample(setup):
    _, net = setup
    calls = []
    hooks = [enc.register_forward_hook(lambda *_: calls.append(1))
             for enc in (net.embedder.lq_encoder, net.embedder.hq_encoder)]
    try:
        known = torch.rand(3, 3, 16, 16) * 2 - 1
        sample_flipnet(net, known, mode="restore", steps=5)
        assert len(calls) == 1
        sample_flipnet(net, known, mode="degrade", steps=5, sampler="dpmpp_2m")
        assert len(calls) == 2
    finally:
        [h.remove() for h in hooks]


def test_method_takes_fidelity_per_call(setup):
    from flipnet.pipelines.flipnet_method import FlipNetMethod

    root, _ = setup
    crops = np.random.default_rng(1).integers(0, 255, (2, 24, 24, 3), dtype=np.uint8)
    method = FlipNetMethod(root / "flipnet", device="cpu", steps=3, seed=2)
    for f in (0.2, 0.8):
        built = FlipNetMethod(root / "flipnet", device="cpu", steps=3, seed=2, fidelity=f)
        assert np.array_equal(method.restore(crops, fidelity=f), built.restore(crops))
    assert np.array_equal(method.restore(crops), method.restore(crops, fidelity=0.5))


def test_serve_cache_holds_one_flipnet_for_all_fidelities():
    from flipnet.serve import MethodCache

    built, seen = [], []

    class Fake:
        name = "flipnet"

        def restore(self, crops, *, fidelity=None):
            seen.append(fidelity)
            return crops

    def factory(name, fidelity):
        built.append((name, fidelity))
        return Fake()

    cache = MethodCache(factory)
    a, b = cache.get("flipnet", 0.2), cache.get("flipnet", 0.8)
    a.restore(np.zeros((1, 4, 4, 3), np.uint8))
    b.restore(np.zeros((1, 4, 4, 3), np.uint8))
    assert len(built) == 1 and len(cache._items) == 1
    assert seen == [0.2, 0.8] and a.name == "flipnet"
    cache.get("prior", 0.2), cache.get("prior", 0.8)  # prior still bakes fidelity in
    assert [n for n, _ in built] == ["flipnet", "prior", "prior"]


# --- pairs: one writer for a restorer folder or a FLIPNET folder ---------------------------


@pytest.mark.parametrize("kind", ["restorer", "flipnet"])
def test_restored_pairs_from_a_restorer_or_a_flipnet_folder(setup, tmp_path, kind):
    from flipnet.training.pairs import restored_pairs

    root, _ = setup
    n = restored_pairs(root / "real_lq", tmp_path / "pairs", root / kind, split="all", size=16,
                       steps=2, progress=False)
    assert n == 6
    first = (tmp_path / "pairs" / "target" / "f3.png").read_bytes()
    (tmp_path / "pairs" / "target" / "f3.png").unlink()
    assert restored_pairs(root / "real_lq", tmp_path / "pairs", root / kind, split="all",
                          size=16, steps=2, progress=False) == 6
    assert (tmp_path / "pairs" / "target" / "f3.png").read_bytes() == first  # seeded by name
