"""Issue 17 (FLIPNET), the condition stream and its paths into the target: a frozen condition
stream is the plain prior bit for bit (defect 3), zero-initialised injection at the resolutions
where detail lives flows one way only (defect 5), a fixed condition timestep reaches the network
in training and sampling (ablation (b)), the ablation switches travel from a training config to
the exported folder, and the input-use metric tells a restorer that copies from one that
ignores its input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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

from flipnet.config import load_config
from flipnet.diffusion.flipnet_sampling import sample_flipnet
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError
from flipnet.models.flipnet import (
    FlipNet,
    FlipNetConfig,
    load_flipnet,
    load_flipnet_config,
    save_flipnet,
)
from flipnet.models.prior import save_prior
from flipnet.pipelines.flipnet_method import restoration_uses_input
from flipnet.training.flipnet import FlipNetTrainConfig, condition_loss_on, mode_loss

REPO = Path(__file__).resolve().parents[1]
NO_ADAPTERS = {"use_boosthub": False, "use_lora": False, "use_embedding": False,
               "mode_embedding": False}


def _net(**kw) -> FlipNet:
    cfg = FlipNetConfig(embedding=TINY_EMB, lora_rank=2, **kw)
    return FlipNet(cfg, TINY_PRIOR, prior_state=tiny_prior().state_dict())


def _randomise(params) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(b, 3, 16, 16, generator=g), torch.randn(b, 3, 16, 16, generator=g)
    return x, c, torch.tensor([3, 70][:b])


# --- defect 3: the frozen condition stream ----------------------------------------------------


@pytest.mark.parametrize("mode", ["restore", "degrade"])
def test_frozen_condition_stream_is_the_plain_prior_bit_for_bit(mode):
    """Every adapter randomised (LoRA, attn2, BoostHub, injection, mode embedding): the
    condition half is still exactly the prior on the same stacked batch; the target is not."""
    prior = tiny_prior()
    net = _net(condition_stream="frozen", injection_resolutions=(16,))
    _randomise(net.trainable_parameters())
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        target, cond = net(x, c, t, mode=mode, context_image=c)
        alone = prior(c, t)
    assert torch.equal(cond, expected[2:])
    torch.testing.assert_close(cond, alone)  # the prior on the condition alone (batch of B)
    assert not torch.allclose(target, expected[:2])


def test_adapted_condition_stream_differs_from_the_prior():
    prior, net = tiny_prior(), _net(condition_stream="adapted")
    _randomise(net.trainable_parameters())
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        cond = net(x, c, t, mode="restore", context_image=c)[1]
    assert not torch.allclose(cond, expected[2:])


def test_frozen_target_stream_keeps_lora_and_cross_attention():
    """Freezing the condition half must not switch the adapters off for the target half: the
    target equals the adapted net's target when BoostHub cannot carry the difference."""
    kw = {"use_boosthub": False, "mode_embedding": False}
    frozen, adapted = _net(condition_stream="frozen", **kw), _net(condition_stream="adapted", **kw)
    _randomise(frozen.trainable_parameters())
    adapted.load_state_dict(frozen.state_dict())
    x, c, t = _inputs()
    with torch.no_grad():
        a = adapted(x, c, t, mode="restore", context_image=c)[0]
        f = frozen(x, c, t, mode="restore", context_image=c)[0]
        plain = _net(**NO_ADAPTERS)(x, c, t, mode="restore")[0]
    torch.testing.assert_close(f, a)  # no path from the condition half: same target
    assert not torch.allclose(f, plain)


def test_condition_loss_is_a_switch_off_for_a_frozen_stream():
    net = _net(condition_stream="frozen")
    schedule = make_schedule(TINY_PRIOR.schedule)
    hq, lq, _ = _inputs()
    only_target = mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(1),
                            condition_loss=False)
    both = mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(1))
    assert float(only_target.detach()) < float(both.detach())
    frozen = FlipNetTrainConfig(flipnet=FlipNetConfig(condition_stream="frozen"))
    adapted = FlipNetTrainConfig(flipnet=FlipNetConfig(condition_stream="adapted"))
    assert not condition_loss_on(frozen) and condition_loss_on(adapted)
    assert not condition_loss_on(dataclasses.replace(adapted, condition_loss=False))
    with pytest.raises(ConfigError, match="condition_loss"):
        condition_loss_on(dataclasses.replace(frozen, condition_loss=True))


def test_old_folder_loads_with_an_adapted_condition_stream(tmp_path):
    """A folder saved before the condition settings existed loads as it was trained."""
    prior = tiny_prior(fp16_exact=True)
    save_prior(tmp_path / "prior-tiny", prior, TINY_PRIOR)
    net = FlipNet(FlipNetConfig(prior="prior-tiny", embedding=TINY_EMB, lora_rank=2,
                                mode_embedding=False, condition_stream="adapted",
                                lora_cross_attention=True), TINY_PRIOR,
                  prior_state=prior.state_dict())
    assert any(".attn2." in k and "lora_" in k for k in net.adapter_state_dict())
    _randomise(net.trainable_parameters())
    with torch.no_grad():
        for v in net.state_dict().values():
            v.copy_(v.half().float()) if v.is_floating_point() else None
    folder = save_flipnet(tmp_path / "flipnet-old", net)
    raw = json.loads((folder / "config.json").read_text())
    for key in ("mode_embedding", "condition_stream", "condition_t", "injection_resolutions",
                "start", "lora_cross_attention"):
        del raw[key]
    (folder / "config.json").write_text(json.dumps(raw))
    loaded = load_flipnet(folder)
    assert loaded.config == net.config
    x, c, t = _inputs()
    with torch.no_grad():
        assert torch.equal(torch.cat(net.eval()(x, c, t, mode="restore", context_image=c)),
                           torch.cat(loaded(x, c, t, mode="restore", context_image=c)))


def test_shipped_flipnet_folder_is_the_ablation_winner():
    """The shipped weights carry the switches the ablation chose (docs/BENCHMARKS.md,
    "Conditioning ablations"): low-noise frozen condition, injection at 64/32 px, start 0.4."""
    folder = REPO / "weights" / "flipnet-64"
    if not (folder / "config.json").is_file():
        pytest.skip("weights/flipnet-64 not present")
    cfg = load_flipnet_config(folder)
    assert (cfg.condition_stream, cfg.condition_t, cfg.injection_resolutions, cfg.start,
            cfg.lora_cross_attention) == ("frozen", 50, (64, 32), 0.4, False)
    winner = json.loads((REPO / "configs" / "flipnet-64-ablation-combined.json").read_text())
    assert {k: v for k, v in winner["flipnet"].items() if k != "start"} == {
        k: v for k, v in json.loads((folder / "config.json").read_text()).items()
        if k in winner["flipnet"] and k != "start"}


def test_lora_stays_off_the_new_cross_attention_by_default():
    """Defect 5: ``attn2`` is new and trains in full, so LoRA on it only duplicates it."""
    keys = [k for k in _net().adapter_state_dict() if "lora_" in k]
    assert keys and all(".attn1." in k for k in keys)
    assert any(".attn2." in k for k in _net(lora_cross_attention=True).adapter_state_dict()
               if "lora_" in k)


# --- defect 5: zero-initialised injection at the detail resolutions -------------------------


def test_fresh_injection_reproduces_the_prior_exactly():
    prior, net = tiny_prior(), _net(injection_resolutions=(16, 8))
    assert len(net.injection) == 4  # the tiny UNet's encoder: 2 blocks at 16 px, 2 at 8 px
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        got = net(x, c, t, mode="restore", context_image=c)
    assert torch.equal(torch.cat(got), expected)


def test_injection_flows_from_condition_to_target_only():
    net = _net(injection_resolutions=(16,), condition_stream="adapted", **NO_ADAPTERS)
    assert {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad} == {
        "injection"}
    _randomise(net.trainable_parameters())
    x, c, t = _inputs()
    with torch.no_grad():
        target, cond = net(x, c, t, mode="restore")
        target_c, _ = net(x, c + 0.5, t, mode="restore")  # poke the condition
        _, cond_x = net(x + 0.5, c, t, mode="restore")  # poke the target
        off = net(x, c, t, mode="restore", phi=0.0)[0]  # phi per call switches it off
        plain = _net(**NO_ADAPTERS)(x, c, t, mode="restore")[0]
    assert not torch.allclose(target, target_c)
    assert torch.equal(cond, cond_x)
    assert torch.equal(off, plain) and not torch.allclose(target, plain)


def test_injection_is_trained_saved_and_refuses_unknown_resolutions(tmp_path):
    net = _net(injection_resolutions=(8,), **NO_ADAPTERS)
    schedule = make_schedule(TINY_PRIOR.schedule)
    hq, lq, _ = _inputs()
    mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(2)).backward()
    grads = [p.grad for p in net.trainable_parameters()]
    assert grads and all(g is not None for g in grads)
    assert any(k.startswith("injection.") for k in net.adapter_state_dict())
    with pytest.raises(ConfigError, match="32 px"):
        _net(injection_resolutions=(32,))


# --- ablation (b): the condition at a fixed timestep ------------------------------------------


def test_sampling_gives_the_condition_its_fixed_timestep_at_every_step():
    net = _net(condition_t=7).eval()
    calls = []

    def spy(_, args):  # UNet(x (2N), t (2N), context): note the condition half of both
        n = args[0].shape[0] // 2
        calls.append((args[1][:n].clone(), args[1][n:].clone(), args[0][n:].clone()))

    hook = net.unet.register_forward_pre_hook(spy)
    try:
        known = torch.rand(2, 3, 16, 16) * 2 - 1
        sample_flipnet(net, known, mode="restore", steps=4, seed=3)
    finally:
        hook.remove()
    assert len(calls) == 4
    assert all(torch.equal(tc, torch.full_like(tc, 7)) for _, tc, _ in calls)
    assert len({int(t[0]) for t, _, _ in calls}) == 4  # the target walks the schedule
    assert all(torch.equal(xc, calls[0][2]) for _, _, xc in calls)  # one fixed noisy condition
    schedule = make_schedule(TINY_PRIOR.schedule)
    # diffused to step 7 (not to the target's t): close to the known image
    assert (calls[0][2] - known).abs().mean() < (schedule.q_sample(
        known, torch.full((2,), 90), torch.randn_like(known)) - known).abs().mean()


@pytest.mark.parametrize("mode", ["restore", "degrade"])
def test_training_builds_the_condition_at_the_fixed_timestep(mode):
    """A spy network that returns the ideal predictions: the loss is zero only if the condition
    was diffused to (and scored at) ``condition_t`` while the target kept its random t."""
    schedule = make_schedule(TINY_PRIOR.schedule)
    hq, lq, _ = _inputs(3)
    seen = {}

    def spy_net(x_target, x_cond, t, *, t_cond, mode, context_image):
        seen.update(t=t, t_cond=t_cond, x_cond=x_cond)
        known, clean = (lq, hq) if mode == "restore" else (hq, lq)
        noise_t = (x_target - schedule.alpha_bar(t, clean).sqrt() * clean) / (
            1 - schedule.alpha_bar(t, clean)).sqrt()
        noise_c = (x_cond - schedule.alpha_bar(t_cond, known).sqrt() * known) / (
            1 - schedule.alpha_bar(t_cond, known)).sqrt()
        return (schedule.training_target(clean, t, noise_t),
                schedule.training_target(known, t_cond, noise_c))

    g = torch.Generator().manual_seed(4)
    loss = mode_loss(spy_net, schedule, hq, lq, mode, g, condition_t=5)
    assert float(loss) < 1e-8
    assert torch.equal(seen["t_cond"], torch.full((3,), 5)) and not (seen["t"] == 5).all()
    g = torch.Generator().manual_seed(4)
    t = torch.randint(0, schedule.num_timesteps, (3,), generator=g)
    noise_hq, noise_lq = torch.randn(hq.shape, generator=g), torch.randn(lq.shape, generator=g)
    known, noise = (lq, noise_lq) if mode == "restore" else (hq, noise_hq)
    assert torch.equal(seen["t"], t)
    assert torch.equal(seen["x_cond"], schedule.q_sample(known, torch.full((3,), 5), noise))


def test_condition_t_must_be_a_step_of_the_schedule():
    with pytest.raises(ConfigError, match="condition_t"):
        _net(condition_t=TINY_PRIOR.schedule.num_timesteps)


def test_config_start_is_the_sampling_default():
    known = torch.rand(1, 3, 16, 16) * 2 - 1
    a = sample_flipnet(_net(start=0.5).eval(), known, mode="restore", steps=4)
    b = sample_flipnet(_net().eval(), known, mode="restore", steps=4, start=0.5)
    c = sample_flipnet(_net().eval(), known, mode="restore", steps=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- the ablation table from configs only -----------------------------------------------------

ABLATIONS = {
    "paper": {"condition_stream": "adapted", "condition_t": None},
    "low-noise-condition": {"condition_t": 50},
    "frozen-condition": {"condition_stream": "frozen"},
    "injection": {"injection_resolutions": (64, 32)},
    "no-boosthub": {"use_boosthub": False},
    "no-embedding": {"use_embedding": False},
    "no-lora": {"use_lora": False},
}


def _ablation(name: str) -> FlipNetTrainConfig:
    return load_config(FlipNetTrainConfig, REPO / "configs" / f"flipnet-64-ablation-{name}.json")


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_change_one_switch_of_the_paper_run(name):
    from flipnet.config import config_to_dict

    cfg, paper = _ablation(name), _ablation("paper")
    for key, value in ABLATIONS[name].items():
        assert getattr(cfg.flipnet, key) == value, key
    a, b = config_to_dict(cfg), config_to_dict(paper)
    top = {k for k in a if a[k] != b[k] and k != "flipnet"}
    assert top == ({"out_dir"} if name != "paper" else set())
    changed = {k for k in a["flipnet"] if a["flipnet"][k] != b["flipnet"][k]}
    assert changed == (set(ABLATIONS[name]) if name != "paper" else set())
    assert cfg.max_minutes > 0 and cfg.out_dir.endswith(name)


def test_training_records_the_switches_in_the_export(tmp_path):
    """Two steps with every new switch on: the exported folder's config carries them all."""
    from flipnet.training.flipnet import train_flipnet

    save_prior(tmp_path / "prior", tiny_prior(), TINY_PRIOR)
    write_train_inputs(tmp_path, faces=2)
    flip = FlipNetConfig(prior=str(tmp_path / "prior"), embedding=TINY_EMB, lora_rank=2,
                         use_embedding=False, condition_stream="frozen", condition_t=3,
                         injection_resolutions=(16, 8), start=0.6)
    cfg = FlipNetTrainConfig(
        data_dir=str(tmp_path / "hq"), split="all", real_lq_dir=str(tmp_path / "real_lq"),
        pairs_dir=str(tmp_path / "pairs"), pseudo_restorer=str(tmp_path / "restorer"),
        out_dir=str(tmp_path / "run"), embedder=None, presets=("gfpgan",), crop_size=32,
        flipnet=flip, batch_size=2, warmup_steps=0, steps=2, save_every=2, sample_every=0,
        sample_count=2, sample_steps=2, log_every=1, seed=1, threads=1)
    out = train_flipnet(cfg)
    assert load_flipnet_config(out) == flip
    card = (out / "MODEL_CARD.md").read_text()
    assert "condition stream: frozen, at step 3, its loss False" in card and "[16, 8]" in card
    assert any(k.startswith("injection.") for k in load_flipnet(out).adapter_state_dict())


# --- issue 17's input-use check ---------------------------------------------------------------


def _faces(n=3):
    g = torch.Generator().manual_seed(6)
    hq = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    lq = (hq + 0.3 * torch.randn(hq.shape, generator=g)).clamp(-1, 1)
    return lq, hq


def test_input_use_passes_a_restorer_that_uses_its_input():
    lq, hq = _faces()
    use = restoration_uses_input(lambda x: x * 0.9, lq, hq)
    assert use.correlation > 0.99 and use.own < use.other and use.passes()


def test_input_use_fails_a_restorer_that_ignores_its_input():
    lq, hq = _faces()
    face = torch.Generator().manual_seed(1)
    fixed = torch.rand(1, 3, 16, 16, generator=face) * 2 - 1  # the same face for every input

    def seeded(x):  # ignores x: noise from the same seed plus one face
        return fixed + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))

    use = restoration_uses_input(seeded, lq, hq)
    assert use.correlation == 0.0 and not use.passes()
    # an average of all the HQ faces is no closer to a face's own HQ than to the others'
    mean = restoration_uses_input(lambda x: hq.mean(0, keepdim=True), lq, hq)
    assert not mean.passes()
    with pytest.raises(ConfigError, match="N >= 2"):
        restoration_uses_input(lambda x: x, lq[:1], hq[:1])


def test_a_briefly_trained_tiny_flipnet_restores_from_its_input():
    """Issue 17's test on a tiny FLIPNET: untrained, its restorations ignore the LQ (r = 0);
    after 200 steps on 4 toy faces, two LQ faces through one seed give outputs that follow the
    LQ difference and sit closer to their own HQ. The prior is random, so this checks the
    wiring (the condition reaches the target, training uses it), not quality: the real check
    runs ``restoration_uses_input`` on trained weights."""
    import torch.nn.functional as F

    from flipnet.diffusion.flipnet_sampling import flipnet_restore

    net = _net(use_embedding=False, injection_resolutions=(16, 8))
    schedule = make_schedule(TINY_PRIOR.schedule)
    g = torch.Generator().manual_seed(1)
    hq = F.interpolate(torch.rand(4, 3, 2, 2, generator=g) * 2 - 1, size=16, mode="bilinear",
                       align_corners=False)  # (4, 3, 16, 16): smooth toy faces
    lq = F.avg_pool2d(hq, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    lq = (lq + 0.1 * torch.randn(hq.shape, generator=g)).clamp(-1, 1)

    def restore(x):
        return flipnet_restore(net, x, steps=10, seed=0)

    before = restoration_uses_input(restore, lq, hq)
    opt = torch.optim.Adam(net.trainable_parameters(), lr=1e-2)
    for step in range(200):
        loss = mode_loss(net, schedule, hq, lq, "restore", torch.Generator().manual_seed(step),
                         condition_loss=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = restoration_uses_input(restore, lq, hq)
    assert before.correlation == 0.0 and not before.passes()
    assert after.passes(min_correlation=0.3), after


def test_shipped_flipnet_restores_from_its_input(shared_data):
    """Issue 17's input-use check on the shipped weights and real faces: four UTKFace test-split
    faces, degraded with the scaled gfpgan preset, restored with the folder's defaults."""
    from flipnet.degradations.model_lq import model_lq
    from flipnet.diffusion.flipnet_sampling import flipnet_restore
    from flipnet.io import load_image, to_tensor
    from flipnet.splits import in_split
    from flipnet.training.data import resize_square

    folder = REPO / "weights" / "flipnet-64"
    if not (folder / "config.json").is_file():
        pytest.skip("weights/flipnet-64 not present")
    files = sorted(in_split(sorted((shared_data / "utkface").glob("*.jpg")), "test"))[:4]
    hq = to_tensor(np.stack([resize_square(load_image(p).rgb, 128) for p in files]))
    lq, _ = model_lq(hq, "gfpgan", model_size=128, seed=0)
    net = load_flipnet(folder)
    use = restoration_uses_input(lambda x: flipnet_restore(net, x, steps=10, seed=0), lq, hq)
    assert use.passes(min_correlation=0.8), use
    assert use.own < 0.5 * use.other, use
