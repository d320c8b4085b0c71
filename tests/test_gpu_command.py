"""The prepared GPU command of issue 18 (scripts/gpu_leg.sh), run on CPU with tiny configs:
unpack shards, train with the GPU switches on (a prior; FLIPNET's embedder then its adapters),
bring back the last leg's export (a tar in 15 MiB parts), a grid and the logs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from flipnet.config import config_to_dict
from flipnet.io import save_image
from flipnet.models.prior import load_prior
from flipnet.training.prior import PriorTrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_leg.sh"


def _shard(tmp: Path, name: str = "tiny", seed: int = 0) -> Path:
    """A tar shard of 10 synthetic 16 px faces under ``name/``, as pack_shards.py lays them out."""
    src = tmp / "src" / name
    rng = np.random.default_rng(seed)
    for i in range(10):
        save_image(src / f"face{i:02d}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    shard = tmp / f"{name}-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(src, arcname=name)
    return shard


def _run(tmp: Path, shards: str, *legs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp / "OUT"),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["sh", str(SCRIPT), shards, *legs], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)


def _joined_export(tmp: Path, name: str) -> Path:
    """``cat NAME.tar.part-* | tar xf -``, as docs/TRAINING.md says; returns the folder."""
    joined = tmp / f"{name}.tar"
    joined.write_bytes(b"".join(p.read_bytes()
                                for p in sorted((tmp / "OUT").glob(f"{name}.tar.part-*"))))
    with tarfile.open(joined) as tar:
        tar.extractall(tmp / "back", filter="data")
    return tmp / "back" / name


@pytest.mark.parametrize("latent", [False, True])
def test_gpu_leg_command_runs_on_cpu_with_a_tiny_config(tmp_path, latent):
    from tests.test_train_prior import TINY_PRIOR, _tiny_autoencoder

    prior, extra = TINY_PRIOR, {}
    if latent:
        unet = dataclasses.replace(TINY_PRIOR.unet, image_size=8, in_channels=4, out_channels=4,
                                   attention_resolutions=(4,))
        prior = dataclasses.replace(TINY_PRIOR, unet=unet)
        extra = {"autoencoder": str(_tiny_autoencoder(tmp_path / "ae"))}
    cfg = PriorTrainConfig(data_dir="out/prepared/tiny", out_dir="out/leg", prior=prior,
                           batch_size=4, steps=3, warmup_steps=1, sample_every=3, save_every=3,
                           sample_count=2, sample_steps=2, threads=1, channels_last=True,
                           data_on_device=True, **extra)
    config = tmp_path / "leg.json"
    config.write_text(json.dumps(config_to_dict(cfg)))
    done = _run(tmp_path, str(_shard(tmp_path)), f"prior:{config}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "OUT").iterdir()) == [
        "prior.log", "prior.tar.part-aa", "samples.png"]
    back = load_prior(_joined_export(tmp_path, "prior"))
    assert back.config == prior and (back.autoencoder is not None) == latent
    assert back.image_size == 16


def test_gpu_leg_command_trains_flipnet_embedder_then_adapters(tmp_path):
    from tests.tiny_flipnet import TINY_EMB, TINY_PRIOR, tiny_prior

    from flipnet.models.flipnet import FlipNetConfig, load_flipnet
    from flipnet.models.prior import save_prior
    from flipnet.models.restorer import Restorer, RestorerConfig, save_restorer
    from flipnet.training.face_embedding import EmbedderTrainConfig
    from flipnet.training.flipnet import FlipNetTrainConfig

    save_prior(tmp_path / "prior", tiny_prior(), TINY_PRIOR)  # committed folders, in real use
    small = RestorerConfig(image_size=16, width=8, enc_blocks=(1, 1), middle_blocks=1,
                           dec_blocks=(1, 1))
    save_restorer(tmp_path / "restorer", Restorer(small), small)
    embedder = EmbedderTrainConfig(data_dir="out/prepared/hq", split="all", out_dir="out/emb",
                                   embedding=TINY_EMB, presets=("gfpgan",), batch_size=2,
                                   stage1_steps=2, stage2_steps=2, sample_every=0, save_every=4,
                                   threads=1, mixed_precision="no")
    adapters = FlipNetTrainConfig(
        data_dir="out/prepared/hq", split="all", real_lq_dir="out/prepared/lq",
        pairs_dir="out/pairs", pseudo_restorer="restorer", out_dir="out/fn",
        embedder="out/emb/embedder", presets=("gfpgan",), crop_size=32,
        flipnet=FlipNetConfig(prior="prior", embedding=TINY_EMB, lora_rank=2, lora_alpha=2.0),
        batch_size=2, warmup_steps=1, steps=2, save_every=2, sample_every=2, sample_count=2,
        sample_steps=2, threads=1)
    for name, cfg in (("emb.json", embedder), ("fn.json", adapters)):
        (tmp_path / name).write_text(json.dumps(config_to_dict(cfg)))
    shards = f"{_shard(tmp_path, 'hq')},{_shard(tmp_path, 'lq', seed=1)}"
    done = _run(tmp_path, shards, "face_embedding:emb.json", "flipnet:fn.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "OUT").iterdir()) == [
        "face_embedding.log", "flipnet.log", "flipnet.tar.part-aa", "samples.png"]
    back = _joined_export(tmp_path, "flipnet")
    net = load_flipnet(back, prior=str(tmp_path / "prior"))
    assert net.config.embedding == TINY_EMB


def test_gpu_leg_command_fails_loudly_on_a_bad_config(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"_class": "PriorTrainConfig", "data_dir": "out/prepared/tiny",
                                  "out_dir": "out/leg", "batch_size": 64}))
    done = _run(tmp_path, str(_shard(tmp_path)), f"prior:{config}")
    assert done.returncode != 0 and "batch" in done.stdout + done.stderr
    unknown = _run(tmp_path, str(_shard(tmp_path)), f"painting:{config}")
    assert unknown.returncode == 2 and "unknown training module 'painting'" in unknown.stderr
    for legs in ((), (str(config),)):  # no leg; a leg without MODULE:
        bad = _run(tmp_path, str(_shard(tmp_path)), *legs)
        assert bad.returncode == 2 and "usage: sh scripts/gpu_leg.sh" in bad.stderr
    assert "fewer than one batch" in done.stdout + done.stderr
