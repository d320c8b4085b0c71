"""The tiny prior and face-embedding configs the FLIPNET tests share, a prior with weights, and
the other inputs of a training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flipnet.models.face_embedding import FaceEmbeddingConfig
from flipnet.models.prior_types import PriorConfig, ScheduleConfig
from flipnet.models.unet import UNet, UNetConfig

TINY_PRIOR = PriorConfig(
    unet=UNetConfig(image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(8,), num_heads=2, norm_groups=8),
    schedule=ScheduleConfig(num_timesteps=100, beta_schedule="cosine", prediction="v"))
TINY_EMB = FaceEmbeddingConfig(image_size=16, channels=(8, 16), tokens=4, dim=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are slower with many threads on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_prior(*, fp16_exact: bool = False) -> UNet:
    """A tiny prior whose zero-initialised outputs are not zero (seeded; ``fp16_exact``: values
    that survive an fp16 save unchanged, as stored weights do)."""
    torch.manual_seed(1)
    prior = UNet(TINY_PRIOR.unet)
    with torch.no_grad():
        for p in prior.parameters():
            if fp16_exact:
                p.copy_((torch.randn_like(p) * 0.05).half().float())
            else:
                p.normal_(0, 0.05)
    return prior


def write_train_inputs(root: Path, *, faces: int = 6) -> None:
    """What a FLIPNET training run reads besides the prior and the embedder: a tiny pseudo-HQ
    restorer (``root/restorer``) and ``faces`` random 16 px faces in ``root/hq`` and
    ``root/real_lq``."""
    from flipnet.io import save_image
    from flipnet.models.restorer import Restorer, RestorerConfig, save_restorer

    tiny = RestorerConfig(image_size=16, width=8, enc_blocks=(1, 1), middle_blocks=1,
                          dec_blocks=(1, 1))
    save_restorer(root / "restorer", Restorer(tiny), tiny)
    rng = np.random.default_rng(0)
    for folder in ("hq", "real_lq"):
        for i in range(faces):
            save_image(root / folder / f"f{i}.png",
                       rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
