"""DifFace-style restoration with the unconditional prior alone: a FaceMethod.

Each batch of crops is diffused to an intermediate step and sampled back with low-pass guidance
toward the input (``flipnet.diffusion.guided_resample``); ``fidelity`` sets how far. A latent
prior does the same on latents: the input, resized to the prior's pixel size, is encoded, guided
in latent space (``prior_resample``) and decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flipnet.device import resolve_device
from flipnet.diffusion.guided_resample import GuidedResampleConfig, guided_resample
from flipnet.errors import ConfigError
from flipnet.io import to_tensor, to_uint8
from flipnet.models.prior import load_prior
from flipnet.models.prior_types import Prior


@torch.no_grad()
def prior_resample(prior: Prior, y: torch.Tensor, cfg: GuidedResampleConfig, *,
                   first_index: int = 0, indices: list[int] | None = None) -> torch.Tensor:
    """y (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) through ``guided_resample``, which handles
    pixel and latent priors alike (the name the pipelines and tests know)."""
    return guided_resample(prior, y, cfg, first_index=first_index, indices=indices)


class PriorMethod:
    """DifFace-style restoration with the prior alone (no trained restorer): a FaceMethod;
    pixel and latent priors alike (``prior_resample``)."""

    name = "prior"
    template = "flipnet"

    def __init__(self, folder: Path, *, device: str = "cpu", batch_size: int = 16,
                 fidelity: float = 0.5, steps: int = 50, seed: int = 0):
        self.device = resolve_device(device)
        self.prior = load_prior(folder, self.device)
        self.prior.model.eval()
        self.size = 128
        self.batch_size = batch_size
        if not 0.0 <= fidelity <= 1.0:
            raise ConfigError(f"fidelity must be in [0, 1], got {fidelity}")
        steps = max(10, int(steps))
        # fidelity 0.5 -> t0 = 0.6 of the schedule (the paper's 150 of 250); tau = 0.36 (90/250)
        t0 = max(1, min(steps - 1, round(steps * (0.8 - 0.4 * fidelity))))
        self.cfg = GuidedResampleConfig(respaced_steps=steps, t0=t0,
                                        tau=min(t0, round(steps * 0.36)), seed=seed)

    @torch.no_grad()
    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored crops of the same size."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            y = to_tensor(np.asarray(crops[i:i + self.batch_size])).to(self.device)
            out.append(to_uint8(prior_resample(self.prior, y, self.cfg, first_index=i)))
        return np.concatenate(out)
