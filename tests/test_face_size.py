"""Small-face rendering: LQ faces of 16-128 px brought to the model size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flipnet.degradations.face_size import (
    FaceSizeConfig,
    degrade_at_face_size,
    sample_face_size,
)
from flipnet.degradations.pipeline import DegradationConfig
from flipnet.errors import ConfigError
from flipnet.io import to_tensor
from flipnet.training.pairs import SyntheticPairs, face_presets


def _detail(x: torch.Tensor) -> float:
    """Mean absolute horizontal gradient: how much fine detail an image holds."""
    return float((x[..., 1:] - x[..., :-1]).abs().mean())


def test_small_faces_lose_detail_with_their_size(astronaut):
    hq = to_tensor(astronaut[100:228, 180:308])  # (1, 3, 128, 128)
    details = []
    for px in (16, 32, 64):
        lq, params = degrade_at_face_size(hq, "gfpgan", px, seed=3)
        assert lq.shape == hq.shape and params["face_px"] == px
        details.append(_detail(lq))
    assert details[0] < details[1] < details[2] < _detail(hq)
    again, _ = degrade_at_face_size(hq, "gfpgan", 32, seed=3)
    assert torch.equal(again, degrade_at_face_size(hq, "gfpgan", 32, seed=3)[0])


def test_face_size_draw_covers_the_range_and_respects_prob():
    cfg = FaceSizeConfig(prob=0.5, size=(16, 128))
    sizes = [sample_face_size(cfg, s, 128) for s in range(400)]
    small = [s for s in sizes if s is not None]
    assert 0.35 < len(small) / len(sizes) < 0.6
    assert min(small) < 24 and max(small) > 90 and all(16 <= s < 128 for s in small)
    assert sample_face_size(FaceSizeConfig(prob=0.0), 1, 128) is None
    with pytest.raises(ConfigError, match="face_size.size"):
        FaceSizeConfig(prob=0.5, size=(64, 16))


def test_synthetic_pairs_mix_small_faces(astronaut):
    pixels = np.stack([astronaut[i:i + 64, i:i + 64] for i in range(0, 160, 20)])
    plain = SyntheticPairs(pixels, face_presets(["gfpgan"], 64))
    mixed = SyntheticPairs(pixels, face_presets(["gfpgan"], 64),
                           small_faces=FaceSizeConfig(prob=1.0, size=(16, 20)))
    lq_plain, hq = plain[(0, False, 5)]
    lq_small, hq2 = mixed[(0, False, 5)]
    assert torch.equal(hq, hq2) and lq_small.shape == lq_plain.shape
    assert _detail(lq_small) < _detail(lq_plain)
    with pytest.raises(ConfigError, match="custom"):
        SyntheticPairs(pixels, [DegradationConfig()], small_faces=FaceSizeConfig(prob=0.5))


def test_clean_share_leaves_the_face_as_it_is(astronaut):
    pixels = np.stack([astronaut[i:i + 32, i:i + 32] for i in range(0, 200, 20)])
    pairs = SyntheticPairs(pixels, face_presets(["codeformer"], 32), clean_prob=0.3)
    same = [torch.equal(*pairs[(i % 10, False, s)]) for i, s in enumerate(range(100, 300))]
    assert 0.15 < np.mean(same) < 0.45
    unchanged = SyntheticPairs(pixels, face_presets(["codeformer"], 32))
    assert not any(torch.equal(*unchanged[(i % 10, False, s)]) for i, s in enumerate(range(50)))
