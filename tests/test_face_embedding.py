"""Face embedder: token shapes, stage-I reconstruction, stage-II contrastive loss falls, save/load."""

from __future__ import annotations

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
