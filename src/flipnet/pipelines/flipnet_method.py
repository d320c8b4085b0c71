"""FLIPNET restoration mode as a FaceMethod (``flipnet restore --method flipnet``).

The sampling itself (both modes, fidelity, seeding per image) is
``flipnet.diffusion.flipnet_sampling``; this class loads the weights and restores crops in
batches, image k of a run seeded with ``seed + k`` whatever the batch size. Fidelity may be given
per call (``restore(crops, fidelity=0.8)``): it is passed down to the sampler, never stored on
the shared network, so one instance serves concurrent requests with different fidelities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flipnet.degradations.model_lq import CROP_SIZE
from flipnet.device import resolve_device
from flipnet.diffusion.flipnet_sampling import flipnet_restore
from flipnet.errors import ConfigError
from flipnet.io import to_tensor, to_uint8
from flipnet.models.flipnet import load_flipnet


class FlipNetMethod:
    """FLIPNET restoration mode as a FaceMethod (``flipnet restore --method flipnet``)."""

    name = "flipnet"
    template = "flipnet"

    def __init__(self, folder: Path, *, device: str = "auto", batch_size: int = 16,
                 fidelity: float = 0.5, steps: int = 50, seed: int = 0, sampler: str = "ddim",
                 start: float = 1.0, prior: str | None = None):
        self.device = resolve_device(device)
        self.net = load_flipnet(folder, prior=prior, device=self.device)
        self.size = CROP_SIZE  # shrunk to the prior's size as in training (model_lq)
        self.batch_size = batch_size
        self.options = {"fidelity": fidelity, "steps": steps, "seed": seed, "sampler": sampler,
                        "start": start}
        _check_fidelity(fidelity)

    @torch.no_grad()
    def restore(self, crops: np.ndarray, *, fidelity: float | None = None) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored crops of the same size; ``fidelity`` for this call
        (default: the one given when built)."""
        options = dict(self.options)
        if fidelity is not None:
            options["fidelity"] = _check_fidelity(fidelity)
        out = []
        for i in range(0, len(crops), self.batch_size):
            lq = to_tensor(np.asarray(crops[i:i + self.batch_size])).to(self.device)
            idx = list(range(i, i + len(lq)))
            out.append(to_uint8(flipnet_restore(self.net, lq, indices=idx, **options)))
        return np.concatenate(out)


def _check_fidelity(fidelity: float) -> float:
    if not 0.0 <= fidelity <= 1.0:
        raise ConfigError(f"fidelity must be in [0, 1], got {fidelity}")
    return float(fidelity)
