"""FLIPNET restoration mode as a FaceMethod (``flipnet restore --method flipnet``).

The sampling itself (both modes, fidelity, seeding per image) is
``flipnet.diffusion.flipnet_sampling``; this class loads the weights and restores crops in
batches, image k of a run seeded with ``seed + k`` whatever the batch size. Fidelity may be given
per call (``restore(crops, fidelity=0.8)``): it is passed down to the sampler, never stored on
the shared network, so one instance serves concurrent requests with different fidelities.

``restoration_uses_input`` is issue 17's check that a restoration does not ignore its input
(run it on trained weights: untrained adapters do ignore it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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
                 start: float | None = None, guidance: int | None = None,
                 prior: str | None = None):
        self.device = resolve_device(device)
        self.net = load_flipnet(folder, prior=prior, device=self.device)
        self.size = CROP_SIZE  # shrunk to the prior's size as in training (model_lq)
        self.batch_size = batch_size
        self.options = {"fidelity": fidelity, "steps": steps, "seed": seed, "sampler": sampler,
                        "start": self.net.config.start if start is None else start,
                        "guidance": (self.net.config.guidance_factor if guidance is None
                                     else guidance)}
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


@dataclass(frozen=True)
class InputUse:
    """What ``restoration_uses_input`` measured."""

    correlation: float  # mean Pearson r of (out_i - out_j) with (lq_i - lq_j) over pairs
    own: float  # mean RMSE of each output to its own HQ
    other: float  # mean RMSE of each output to the other faces' HQ

    def passes(self, min_correlation: float = 0.1) -> bool:
        """Outputs follow their inputs and each is closer to its own HQ than to the others'."""
        return self.correlation >= min_correlation and self.own < self.other


def restoration_uses_input(restore: Callable[[torch.Tensor], torch.Tensor], lq: torch.Tensor,
                           hq: torch.Tensor) -> InputUse:
    """Issue 17's test that restoration does not ignore its input: each of N >= 2 LQ faces
    (N, 3, H, W) in [-1, 1] goes through ``restore`` alone (so every face gets the same seed),
    and the output differences are compared with the LQ differences (LQ resized to the output's
    size; r = 0 where two outputs are identical) and the outputs with their own and the other
    faces' HQ (N, 3, H', W')."""
    if len(lq) < 2 or len(lq) != len(hq):
        raise ConfigError(f"restoration_uses_input needs N >= 2 LQ faces and as many HQ, got "
                          f"{len(lq)} and {len(hq)}")
    out = torch.cat([restore(lq[i:i + 1]).float() for i in range(len(lq))])  # (N, 3, H', W')
    lq = lq.float()
    if lq.shape[-2:] != out.shape[-2:]:
        lq = F.interpolate(lq, size=out.shape[-2:], mode="bicubic", antialias=True,
                           align_corners=False)
    hq = hq.float()
    rs = []
    for i, j in combinations(range(len(out)), 2):
        a, b = (out[i] - out[j]).flatten(), (lq[i] - lq[j]).flatten()
        a, b = a - a.mean(), b - b.mean()
        denom = float(a.norm() * b.norm())
        rs.append(float(a @ b) / denom if denom > 0 else 0.0)
    if hq.shape != out.shape:
        raise ConfigError(f"restoration_uses_input: HQ {tuple(hq.shape)} and outputs "
                          f"{tuple(out.shape)} differ in shape")
    rmse = (out[:, None] - hq[None]).pow(2).flatten(2).mean(-1).sqrt()  # (N, N): out_i to hq_j
    n = len(out)
    own = float(rmse.diagonal().mean())
    other = float((rmse.sum() - rmse.diagonal().sum()) / (n * (n - 1)))
    return InputUse(correlation=float(np.mean(rs)), own=own, other=other)
