"""FLIPNET network: adapter identity, stream wiring per mode, trainable set, save/load, inference;
FLIPNET training: gradients reach every adapter, kill -9 + rerun = unbroken run, a changed config
is refused, two gloo processes stay in sync."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
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

from flipnet.diffusion.flipnet_sampling import flipnet_degrade, flipnet_restore
from flipnet.diffusion.schedules import make_schedule
from flipnet.errors import ConfigError, FlipnetError, WeightsError
from flipnet.models.boosthub import BoostHubProcessor
from flipnet.models.flipnet import FlipNet, FlipNetConfig, load_flipnet, save_flipnet
from flipnet.models.prior import save_prior
from flipnet.pipelines.flipnet_method import FlipNetMethod
from flipnet.training.flipnet import FlipNetTrainConfig, frozen_checksum, mode_loss, train_flipnet


def _net(**kw) -> FlipNet:
    cfg = FlipNetConfig(embedding=TINY_EMB, lora_rank=2, **kw)
    return FlipNet(cfg, TINY_PRIOR, prior_state=tiny_prior().state_dict())


def _randomise_adapters(net: FlipNet) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(b, 3, 16, 16, generator=g), torch.randn(b, 3, 16, 16, generator=g)
    return x, c, torch.tensor([3, 70][:b])


def test_fresh_flipnet_equals_frozen_prior_exactly():
    prior, net = tiny_prior(), _net()
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        pred_target, pred_cond = net(x, c, t, mode="restore", context_image=c)
    assert torch.equal(torch.cat([pred_target, pred_cond]), expected)


def test_phi_zero_equals_prior_even_with_trained_boosthub():
    prior, net = tiny_prior(), _net(use_embedding=False, use_lora=False, mode_embedding=False)
    _randomise_adapters(net)
    x, c, t = _inputs()
    with torch.no_grad():
        expected = prior(torch.cat([x, c]), torch.cat([t, t]))
        boosted = net(x, c, t, mode="restore")[0]
        net.set_phi(0.0)
        pred_target, pred_cond = net(x, c, t, mode="restore")
    assert torch.equal(torch.cat([pred_target, pred_cond]), expected)
    assert not torch.allclose(boosted, pred_target)  # the trained hub did change the target


@pytest.mark.parametrize("mode", ["restore", "degrade"])
def test_mode_flip_swaps_stream_roles(mode):
    """Only the target stream reads the other one: restore = HQ target, degrade = LQ target."""
    net = _net()
    _randomise_adapters(net)
    g = torch.Generator().manual_seed(2)
    hq, lq, t = *_inputs()[:2], _inputs()[2]
    xt_hq, xt_lq = torch.randn(hq.shape, generator=g), torch.randn(lq.shape, generator=g)
    with torch.no_grad():
        hq_a, lq_a = net.forward_streams(xt_hq, xt_lq, t, mode=mode, hq=hq, lq=lq)
        _, lq_b = net.forward_streams(xt_hq + 0.5, xt_lq, t, mode=mode, hq=hq, lq=lq)  # poke HQ
        hq_c, _ = net.forward_streams(xt_hq, xt_lq + 0.5, t, mode=mode, hq=hq, lq=lq)  # poke LQ
    lq_sees_hq, hq_sees_lq = not torch.equal(lq_a, lq_b), not torch.equal(hq_a, hq_c)
    # restore: LQ is the condition (never sees the HQ stream), HQ the target (reads LQ);
    # degrade: the roles flip
    assert (lq_sees_hq, hq_sees_lq) == ((False, True) if mode == "restore" else (True, False))


def test_boosthub_reads_only_the_condition_half():
    hub = BoostHubProcessor(8, phi=1.0)
    torch.nn.init.normal_(hub.to_out.weight)
    from flipnet.models.attention import Attention

    attn = Attention(8, heads=2)
    x = torch.randn(4, 5, 8)
    y = hub(attn, x)
    plain = attn.processor(attn, x)
    assert torch.equal(y[2:], plain[2:]) and not torch.allclose(y[:2], plain[:2])
    with pytest.raises(ConfigError, match="even batch"):
        hub(attn, x[:3])


def test_only_adapters_require_grad():
    net = _net()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "mode_embedding.weight" in trainable
    trainable.discard("mode_embedding.weight")
    assert trainable and all(n.startswith("unet.") for n in trainable)  # embedder frozen
    assert not any(n[len("unet."):] in net.frozen_keys for n in trainable)
    assert all(("lora_" in n or ".processor." in n or ".attn2." in n or ".norm_cross." in n)
               for n in trainable)
    kinds = {"lora_": 0, ".processor.": 0, ".attn2.": 0}
    for n in trainable:
        for k in kinds:
            kinds[k] += k in n
    assert all(kinds.values())
    ablated = _net(use_lora=False, use_boosthub=False, use_embedding=False, mode_embedding=False)
    assert not ablated.trainable_parameters()
    frozen_checksum(net)  # raises when a prior tensor is trainable


def test_training_step_lowers_loss_on_fixed_batch():
    net = _net()
    schedule = make_schedule(TINY_PRIOR.schedule)
    hq, lq, _ = _inputs(4)
    opt = torch.optim.Adam(net.trainable_parameters(), lr=1e-2)
    before = frozen_checksum(net)

    def loss_now():  # the loss training uses with a frozen condition stream: targets only
        g = torch.Generator().manual_seed(9)
        return (mode_loss(net, schedule, hq, lq, "restore", g, condition_loss=False)
                + mode_loss(net, schedule, hq, lq, "degrade", g, condition_loss=False))

    first = float(loss_now().detach())
    for _ in range(10):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    # a random tiny prior leaves the adapters little to fix: a small but steady fall
    assert float(loss_now().detach()) < 0.999 * first
    assert frozen_checksum(net) == before  # the prior did not move


@pytest.fixture()
def flipnet_folder(tmp_path):
    prior = tiny_prior()
    with torch.no_grad():  # the prior is stored in fp16 too
        for p in prior.parameters():
            p.copy_(p.half().float())
    save_prior(tmp_path / "prior-tiny", prior, TINY_PRIOR)
    net = FlipNet(FlipNetConfig(prior="prior-tiny", embedding=TINY_EMB, lora_rank=2), TINY_PRIOR,
                  prior_state=prior.state_dict())
    _randomise_adapters(net)
    with torch.no_grad():  # fp16 storage: make the in-memory weights fp16-exact first
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
    return save_flipnet(tmp_path / "flipnet-tiny", net), net


def test_save_load_round_trip_exact(flipnet_folder):
    folder, net = flipnet_folder
    loaded = load_flipnet(folder)
    a, b = net.state_dict(), loaded.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    x, c, t = _inputs()
    with torch.no_grad():
        assert torch.equal(net.eval()(x, c, t, mode="degrade", context_image=c)[0],
                           loaded(x, c, t, mode="degrade", context_image=c)[0])


def test_load_names_folder_on_mismatch(flipnet_folder, tmp_path):
    folder, _ = flipnet_folder
    (folder / "config.json").write_text((folder / "config.json").read_text()
                                        .replace('"lora_rank": 2', '"lora_rank": 3'))
    with pytest.raises(WeightsError, match="flipnet-tiny"):
        load_flipnet(folder)
    with pytest.raises(WeightsError, match="not a FLIPNET"):
        load_flipnet(tmp_path)


def test_method_and_degrade_give_finite_right_shaped_images(flipnet_folder):
    folder, net = flipnet_folder
    method = FlipNetMethod(folder, device="cpu", steps=4, seed=3, batch_size=2)
    crops = np.random.default_rng(0).integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
    out = method.restore(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    again = FlipNetMethod(folder, device="cpu", steps=4, seed=3, batch_size=3).restore(crops)
    assert np.array_equal(out, again)  # batch size does not change a face
    hq = torch.rand(2, 3, 20, 20) * 2 - 1
    for sampler in ("ddim", "dpmpp_2m", "ddpm"):
        lq = flipnet_degrade(net, hq, steps=3, sampler=sampler, seed=1)
        assert lq.shape == hq.shape and torch.isfinite(lq).all() and lq.abs().max() <= 1
    restored = flipnet_restore(net, hq, steps=3, fidelity=0.0, start=0.5)
    assert restored.shape == hq.shape and net.unet.middle_block[1].attn1.processor.phi == 1.0


def test_api_degrader_flipnet_mode_keeps_type_and_size(flipnet_folder):
    from PIL import Image

    from flipnet.api import Degrader

    folder, _ = flipnet_folder
    hq = np.random.default_rng(2).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    lq, params = Degrader("flipnet", weights=str(folder), steps=3, seed=4, device="cpu").degrade(hq)
    assert lq.shape == hq.shape and lq.dtype == np.uint8 and params["seed"] == 4
    again, _ = Degrader("flipnet", weights=str(folder), steps=3, seed=4,
                        device="cpu").degrade(Image.fromarray(hq))
    assert isinstance(again, Image.Image) and np.array_equal(np.asarray(again), lq)


def test_degrade_folder_with_flipnet_is_resumable(flipnet_folder, tmp_path):
    from flipnet.io import save_image
    from flipnet.pipelines.degrade import DegradeConfig, flipnet_degrade_folder

    folder, _ = flipnet_folder
    src = tmp_path / "hq"
    rng = np.random.default_rng(1)
    for i in range(2):
        save_image(src / f"f{i}.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    (src / "bad.png").write_bytes(b"not an image")
    cfg = DegradeConfig(weights=str(folder), steps=3, device="cpu", progress=False)
    with pytest.warns(UserWarning, match="bad.png"):
        report = flipnet_degrade_folder(src, tmp_path / "lq", cfg)
    assert report.written == 2 and list(report.skipped) == [str(src / "bad.png")]
    first = (tmp_path / "lq" / "f1.png").read_bytes()
    (tmp_path / "lq" / "f1.png").unlink()
    with pytest.warns(UserWarning, match="bad.png"):
        again = flipnet_degrade_folder(src, tmp_path / "lq", cfg)
    assert (again.written, again.existing) == (1, 1)
    assert (tmp_path / "lq" / "f1.png").read_bytes() == first  # seed + i: same image again
    # --color-fix N: the HQ's low band comes back (closer to the HQ at 1/4 size), recorded
    from flipnet.io import load_image

    with pytest.warns(UserWarning, match="bad.png"):
        fixed = flipnet_degrade_folder(src, tmp_path / "lq-fix", DegradeConfig(
            weights=str(folder), steps=3, device="cpu", progress=False, color_fix=4))
    assert fixed.written == 2
    params = json.loads((tmp_path / "lq-fix" / "params.json").read_text())
    assert params["color_fix"] == 4 and "color_fix" not in json.loads(
        (tmp_path / "lq" / "params.json").read_text())

    def low(path):
        rgb = load_image(path).rgb.astype(float)
        return rgb.reshape(5, 4, 5, 4, 3).mean(axis=(1, 3))

    hq = low(src / "f1.png")
    assert np.abs(low(tmp_path / "lq-fix" / "f1.png") - hq).mean() < \
        np.abs(low(tmp_path / "lq" / "f1.png") - hq).mean()


def test_every_trainable_parameter_gets_a_gradient():
    """DDP (several processes) fails on trainable parameters that take no part in the loss."""
    net = _net()
    schedule = make_schedule(TINY_PRIOR.schedule)
    hq, lq, _ = _inputs(2)
    g = torch.Generator().manual_seed(4)
    loss = (mode_loss(net, schedule, hq, lq, "restore", g)
            + mode_loss(net, schedule, hq, lq, "degrade", g))
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"trainable but unused: {missing[:3]}"
    assert all(p.grad is None for n, p in net.named_parameters() if not p.requires_grad)


# --- training runs: fault tolerance and several processes -----------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory) -> tuple[Path, FlipNetTrainConfig]:
    """A tiny prior (non-zero output layer), embedder, restorer and 6 + 6 faces; a 4-step config."""
    from flipnet.models.face_embedding import FaceEmbedder, save_face_embedder

    root = tmp_path_factory.mktemp("flipnet-train")
    save_prior(root / "prior", tiny_prior(), TINY_PRIOR)
    torch.manual_seed(2)
    save_face_embedder(root / "embedder", FaceEmbedder(TINY_EMB))
    write_train_inputs(root)
    cfg = FlipNetTrainConfig(
        data_dir=str(root / "hq"), split="all", real_lq_dir=str(root / "real_lq"),
        pairs_dir=str(root / "pairs"), pseudo_restorer=str(root / "restorer"),
        out_dir=str(root / "straight"), embedder=str(root / "embedder"), presets=("gfpgan",),
        crop_size=32,
        flipnet=FlipNetConfig(prior=str(root / "prior"), embedding=TINY_EMB, lora_rank=2,
                              lora_alpha=2.0),
        batch_size=2, lr=1e-3, warmup_steps=1, steps=4, save_every=2, sample_every=2,
        sample_count=2, sample_steps=2, log_every=1, seed=1, threads=1, keep_checkpoints=3)
    return root, cfg


@pytest.fixture(scope="module")
def straight_run(train_setup) -> Path:
    """The unbroken 4-step run (in this process)."""
    _, cfg = train_setup
    train_flipnet(cfg)
    return Path(cfg.out_dir)


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("FLIPNET_KILL_AT", None)
    return {**env, **extra}


def _train_cli(config: Path, *, kill_at: str | None = None) -> int:
    """``flipnet train flipnet --config CONFIG`` in a subprocess; its exit code."""
    r = subprocess.run([sys.executable, "-m", "flipnet.cli", "train", "flipnet", "--config",
                        str(config)], env=_env(**({"FLIPNET_KILL_AT": kill_at} if kill_at else {})),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode in (0, -signal.SIGKILL), r.stderr[-2000:]
    return r.returncode


def _files(root: Path, *, skip=("MODEL_CARD.md", "train_config.json", "log.jsonl",
                                 "custom_checkpoint_1.pkl")) -> dict[str, bytes]:
    """Relative path -> bytes, except files holding wall times or the out_dir."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.mark.slow
def test_killed_flipnet_training_reruns_to_the_unbroken_result(train_setup, straight_run):
    from flipnet.config import save_config

    root, cfg = train_setup
    out = root / "broken"
    save_config(dataclasses.replace(cfg, out_dir=str(out)), root / "broken.json")
    # kill -9 between writing and renaming checkpoint 4, then inside the export swap; rerun
    codes = [_train_cli(root / "broken.json", kill_at="checkpoint:4"),
             _train_cli(root / "broken.json", kill_at="export")]
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert (out / "flipnet.tmp").is_dir() and not (out / "flipnet").exists()  # killed mid-export
    train_flipnet(dataclasses.replace(cfg, out_dir=str(out)))  # the rerun (here, to save time)
    want, got = _files(straight_run), _files(out)
    assert "flipnet/model-00001.safetensors" in got and "checkpoints/step-0000004/model.safetensors" in got
    assert want.keys() == got.keys()
    assert [k for k in want if want[k] != got[k]] == []  # adapters, EMA, optimizer, samples
    straight_adapters = load_flipnet(straight_run / "flipnet").adapter_state_dict()
    fresh = _net().adapter_state_dict()
    assert any(not torch.equal(v, fresh[k].half().float()) for k, v in straight_adapters.items()
               if "lora_B" in k)  # training did move the adapters
    steps = [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps replayed after a kill are logged once
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]


def test_rerun_with_another_config_is_refused_naming_the_change(train_setup, straight_run):
    _, cfg = train_setup
    with pytest.raises(ConfigError, match=r"straight: holds checkpoints .* different config "
                                      r"\(lr: 0.001 -> 0.002"):
        train_flipnet(dataclasses.replace(cfg, lr=2e-3, steps=6))
    with pytest.raises(ConfigError, match="phi = 0"):
        train_flipnet(dataclasses.replace(cfg, out_dir=str(straight_run.parent / "phi0"),
                                          flipnet=dataclasses.replace(cfg.flipnet, phi=0.0)))


_SPY = """
import hashlib, sys
from pathlib import Path
import flipnet.training.flipnet as T
from flipnet.config import load_config

save = T.save_checkpoint
def spy(accelerator, root, step, **kw):  # each process notes its adapters at each checkpoint
    net = accelerator.unwrap_model(accelerator._models[0])
    h = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in net.trainable_parameters()))
    (Path(root).parent / f"rank{accelerator.process_index}-step{step}.sha1").write_text(h.hexdigest())
    return save(accelerator, root, step, **kw)
T.save_checkpoint = spy
T.train_flipnet(load_config(T.FlipNetTrainConfig, sys.argv[1]))
"""


@pytest.mark.slow
def test_two_gloo_processes_keep_the_adapters_in_sync(train_setup):
    """Each process sees other batches; DDP must average the gradients, so after every step
    both processes hold the same adapters (they drift apart when the unwrapped net is called)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from flipnet.config import save_config

    root, cfg = train_setup
    out = root / "ddp"
    save_config(dataclasses.replace(cfg, out_dir=str(out), sample_every=0), root / "ddp.json")
    (root / "spy.py").write_text(_SPY)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(29500 + (os.getpid() + 7) % 1000), str(root / "spy.py"),
           str(root / "ddp.json")]
    r = subprocess.run(cmd, cwd=root, env=_env(MASTER_ADDR="127.0.0.1", ACCELERATE_USE_CPU="1"),
                       capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0 and "Address already in use" in r.stderr:
        pytest.skip(f"two-process launch not possible here: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    sha = {p.stem: p.read_text() for p in out.glob("rank*.sha1")}
    assert sha.keys() == {"rank0-step2", "rank1-step2", "rank0-step4", "rank1-step4"}
    assert sha["rank0-step2"] == sha["rank1-step2"] and sha["rank0-step4"] == sha["rank1-step4"]
    assert sha["rank0-step2"] != sha["rank0-step4"]  # and they did train
    steps = [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one log, by the main process
    assert (out / "flipnet" / "model-00001.safetensors").is_file()


def test_finetune_accepts_flipnet_as_the_restorer(train_setup, straight_run, tmp_path):
    """Issue 5: unsupervised fine-tuning works for FLIPNET in restoration mode too."""
    from flipnet.api import finetune
    from flipnet.training.finetune import FinetuneConfig

    root, _ = train_setup
    start = straight_run / "flipnet"
    folder = finetune(FinetuneConfig(
        restorer=str(start), unlabeled=str(root / "real_lq"), split="all", out=str(tmp_path),
        prior=str(root / "prior"), respaced_steps=20, t0=12, tau=5, steps=2, batch_size=2,
        device="cpu"))
    assert len(list((tmp_path / "pseudo" / "target").glob("*.png"))) == 6
    tuned, before = load_flipnet(folder), load_flipnet(start)
    a, b = tuned.adapter_state_dict(), before.adapter_state_dict()
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the adapters moved
    emb = [k for k in a if k.startswith("embedder.")]  # issue 17: the frozen embedder is kept
    assert emb and all(torch.equal(a[k], b[k]) for k in emb)
    assert f"started from `{start}`" in (folder / "MODEL_CARD.md").read_text()


def test_finetune_refuses_gan_real_for_a_flipnet_folder(train_setup, straight_run, tmp_path):
    from flipnet.training.finetune import FinetuneConfig, finetune_on_pairs

    (tmp_path / "pairs" / "target").mkdir(parents=True)
    with pytest.raises(FlipnetError, match="--gan-real is for fast restorers"):
        finetune_on_pairs(FinetuneConfig(restorer=str(straight_run / "flipnet"),
                                         gan_real=str(tmp_path), out=str(tmp_path / "ft")),
                          tmp_path / "pairs")
