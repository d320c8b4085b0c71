"""The prepared GPU command of issue 18 (scripts/gpu_prior_leg.sh), run on CPU with a tiny config:
unpack a shard, train with the GPU switches on, bring back the export (a tar in 15 MiB parts)
and a grid."""

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
SCRIPT = ROOT / "scripts" / "gpu_prior_leg.sh"


def _shard(tmp: Path) -> Path:
    """A tar shard of 10 synthetic 16 px faces under ``tiny/``, as pack_shards.py lays them out."""
    src = tmp / "src" / "tiny"
    rng = np.random.default_rng(0)
    for i in range(10):
        save_image(src / f"face{i:02d}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    shard = tmp / "tiny-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(src, arcname="tiny")
    return shard


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
    out = tmp_path / "OUT"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out),
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["sh", str(SCRIPT), str(config), str(_shard(tmp_path))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["prior.tar.part-aa", "samples.png",
                                                     "train.log"]
    joined = tmp_path / "prior.tar"  # `cat prior.tar.part-* > prior.tar`, as docs/TRAINING.md says
    joined.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("prior.tar.part-*"))))
    with tarfile.open(joined) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    back = load_prior(tmp_path / "back" / "prior")
    assert back.config == prior and (back.autoencoder is not None) == latent
    assert back.image_size == 16


def test_gpu_leg_command_fails_loudly_on_a_bad_config(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"_class": "PriorTrainConfig", "data_dir": "out/prepared/tiny",
                                  "out_dir": "out/leg", "batch_size": 64}))
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "OUT"),
           "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["sh", str(SCRIPT), str(config), str(_shard(tmp_path))], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "fewer than one batch" in done.stdout + done.stderr
