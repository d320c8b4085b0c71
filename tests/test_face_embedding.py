"""Face embedder: token shapes, stage-I reconstruction, stage-II contrastive loss falls, save/load;
its training loop: a run resumed at the stage boundary and killed mid-export ends byte-identical
to an unbroken run, and a rerun with another config is refused."""

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

from flipnet.errors import ConfigError
from flipnet.models.face_embedding import (
    FaceEmbedder,
    FaceEmbeddingConfig,
    alignment_loss,
    load_face_embedder,
    reconstruction_loss,
    save_face_embedder,
    token_contrastive_loss,
)
from flipnet.training.face_embedding import EmbedderTrainConfig, train_face_embedding

TINY = FaceEmbeddingConfig(image_size=16, channels=(8, 16), tokens=4, dim=16, temperature=0.1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _faces(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    lq = (hq + 0.3 * torch.randn(hq.shape, generator=g)).clamp(-1, 1)  # noisy versions
    return hq, lq


def test_shapes_and_resize():
    emb = FaceEmbedder(TINY)
    hq, _ = _faces(3)
    assert emb.encode(hq, "lq").shape == (3, 4, 16)
    assert emb.encode(torch.zeros(2, 3, 24, 24), "hq").shape == (2, 4, 16)  # resized to 16
    assert emb.reconstruct(hq, "hq").shape == hq.shape
    with pytest.raises(ConfigError, match="'hq' or 'lq'"):
        emb.encode(hq, "mid")
    with pytest.raises(ConfigError, match="square"):
        FaceEmbedder(FaceEmbeddingConfig(image_size=16, channels=(8,), tokens=3, dim=8))


def test_contrastive_loss_is_low_for_matching_tokens():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 4, 16, generator=g)
    matched = token_contrastive_loss(a, a, temperature=0.1)
    shuffled = token_contrastive_loss(a, a[torch.tensor([1, 2, 3, 4, 0])], temperature=0.1)
    assert matched < 0.1 < shuffled


def test_stage_two_contrastive_loss_falls_and_trains_only_lq_encoder():
    torch.manual_seed(0)
    emb = FaceEmbedder(TINY)
    hq, lq = _faces(6)
    hq_before = {k: v.clone() for k, v in emb.hq_encoder.state_dict().items()}
    opt = torch.optim.Adam(emb.parameters(), lr=3e-3)
    first = float(alignment_loss(emb, hq, lq).detach())
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        alignment_loss(emb, hq, lq).backward()
        opt.step()
    assert float(alignment_loss(emb, hq, lq).detach()) < 0.5 * first
    assert all(torch.equal(v, emb.hq_encoder.state_dict()[k]) for k, v in hq_before.items())


def test_stage_one_reconstruction_falls():
    torch.manual_seed(0)
    emb = FaceEmbedder(TINY)
    hq, lq = _faces(4)
    opt = torch.optim.Adam(emb.parameters(), lr=3e-3)
    first = float(reconstruction_loss(emb, hq, lq).detach())
    for _ in range(20):
        opt.zero_grad()
        reconstruction_loss(emb, hq, lq).backward()
        opt.step()
    assert float(reconstruction_loss(emb, hq, lq).detach()) < 0.9 * first


def test_save_load_round_trip(tmp_path):
    emb = FaceEmbedder(TINY)
    with torch.no_grad():
        for v in emb.state_dict().values():
            v.copy_(v.half().float())
    save_face_embedder(tmp_path / "emb", emb)
    back = load_face_embedder(tmp_path / "emb")
    assert back.config == TINY
    a, b = emb.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def train_cfg(tmp_path_factory) -> EmbedderTrainConfig:
    """6 random 16 px faces and a 2 + 2 step config (stage I, then stage II)."""
    from flipnet.io import save_image

    root = tmp_path_factory.mktemp("embedder-train")
    rng = np.random.default_rng(0)
    for i in range(6):
        save_image(root / "hq" / f"f{i}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    return EmbedderTrainConfig(data_dir=str(root / "hq"), split="all",
                               out_dir=str(root / "straight"), embedding=TINY, presets=("gfpgan",),
                               batch_size=2, lr=1e-3, stage1_steps=2, stage2_steps=2,
                               sample_every=2, sample_count=2, save_every=2, log_every=1, seed=4,
                               threads=1, keep_checkpoints=3)


def _files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes, except files holding wall times or the out_dir."""
    skip = ("MODEL_CARD.md", "train_config.json", "log.jsonl", "custom_checkpoint_1.pkl")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.mark.slow
def test_resumed_and_killed_embedder_training_equals_unbroken(train_cfg):
    from flipnet.config import save_config

    straight = Path(train_face_embedding(train_cfg)).parent
    out = straight.parent / "broken"
    broken = dataclasses.replace(train_cfg, out_dir=str(out))
    # stage I only (stage2_steps only says where to stop), then continue into stage II and get
    # killed (kill -9) inside the export swap, then rerun
    train_face_embedding(dataclasses.replace(broken, stage2_steps=0))
    save_config(broken, straight.parent / "broken.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLIPNET_KILL_AT": "export",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    r = subprocess.run([sys.executable, "-m", "flipnet.cli", "train", "embedder", "--config",
                        str(straight.parent / "broken.json")], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    train_face_embedding(broken)
    want, got = _files(straight), _files(out)
    assert "embedder/model-00001.safetensors" in got and "checkpoints/step-0000004/model.safetensors" in got
    assert want.keys() == got.keys()
    assert [k for k in want if want[k] != got[k]] == []  # weights, EMA, optimizer, RNG, samples
    steps = [json.loads(s)["step"] for s in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]
    # stage II (steps 3-4) moved the LQ encoder only; the HQ encoder is its frozen teacher
    from safetensors.torch import load_file

    at2, at4 = (load_file(out / "checkpoints" / f"step-000000{n}" / "model.safetensors")
                for n in (2, 4))
    assert all(torch.equal(at2[k], at4[k]) for k in at2 if k.startswith("embedder.hq_encoder."))
    assert not all(torch.equal(at2[k], at4[k]) for k in at2
                   if k.startswith("embedder.lq_encoder."))


def test_embedder_rerun_with_another_config_is_refused(train_cfg, tmp_path):
    cfg = dataclasses.replace(train_cfg, out_dir=str(tmp_path / "run"), stage2_steps=0)
    train_face_embedding(cfg)
    with pytest.raises(ConfigError, match=r"run: holds checkpoints \(latest step-0000002\) of a "
                                          r"different config \(stage1_steps: 2 -> 3"):
        train_face_embedding(dataclasses.replace(cfg, stage1_steps=3))
    with pytest.warns(UserWarning, match="resuming step-0000002 with changed settings: lr"):
        train_face_embedding(dataclasses.replace(cfg, lr=5e-4, resume=True))  # --resume forces it
