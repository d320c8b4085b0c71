"""Restoration methods as ``FaceMethod`` objects, built by name from a plain dict of factories.

``restorer``  the fast feed-forward restorer (one forward pass; weights/restorer-128)
``finetuned`` the same network after unsupervised fine-tuning (weights/restorer-128-finetuned)
``prior``     DifFace-style restoration with the unconditional prior alone: diffuse the input to
              an intermediate step and sample back with low-pass guidance (weights/prior-64)
``flipnet``   FLIPNET restoration mode: the prior + BoostHub/LoRA/face-embedding adapters,
              sampled with the LQ as the condition stream (weights/flipnet-64; listed by
              ``available_methods`` only once trained weights are there)
``bicubic``   baseline: down x4 and bicubic back up (what a plain upscaler gives)
``input``     baseline: the input itself
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from flipnet.device import resolve_device
from flipnet.errors import WeightsError
from flipnet.io import to_tensor, to_uint8

WEIGHTS_DIR = Path(os.environ.get("FLIPNET_WEIGHTS", Path(__file__).resolve().parents[3] / "weights"))
DEFAULT_WEIGHTS = {"restorer": "restorer-128", "finetuned": "restorer-128-finetuned",
                   "prior": "prior-64", "flipnet": "flipnet-64"}


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A weights folder from a path, or a shipped name under ``weights/`` (or $FLIPNET_WEIGHTS)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    q = WEIGHTS_DIR / str(name_or_path)
    if q.exists():
        return q
    raise WeightsError(f"{name_or_path}: no such weights folder (looked in {WEIGHTS_DIR})")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; a named device must exist (``ConfigError`` if not).
    Kept for the existing callers; the logic lives in ``flipnet.device.resolve_device``."""
    return resolve_device(device)


@dataclass
class InputMethod:
    """Baseline that returns its input."""

    name: str = "input"
    size: int = 128
    template: str = "flipnet"

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """Identity."""
        return np.array(crops, copy=True)


@dataclass
class BicubicMethod:
    """Baseline: down-sample by ``factor`` (area) and bicubic back up."""

    name: str = "bicubic"
    size: int = 128
    template: str = "flipnet"
    factor: int = 4

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """Area down, bicubic up."""
        s = self.size // self.factor
        return np.stack([cv2.resize(cv2.resize(c, (s, s), interpolation=cv2.INTER_AREA),
                                    (c.shape[1], c.shape[0]), interpolation=cv2.INTER_CUBIC)
                         for c in crops])


@dataclass
class ClassicalMethod:
    """Baseline with fixed parameters: OpenCV non-local means, then an unsharp mask.

    ``cv2.fastNlMeansDenoisingColored(h=6, hColor=6, template 7, search 21)``, then
    ``out = den + amount * (den - GaussianBlur(den, sigma))`` with amount 0.6, sigma 1.5 px at
    128 px (the 'five lines of OpenCV' a restorer must beat)."""

    name: str = "classical"
    size: int = 128
    template: str = "flipnet"
    h: float = 6.0
    amount: float = 0.6
    sigma: float = 1.5

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """Denoise, then sharpen, each crop."""
        out = []
        for c in np.asarray(crops):
            den = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(c), None, self.h, self.h,
                                                  7, 21).astype(np.float32)
            soft = cv2.GaussianBlur(den, (0, 0), self.sigma * c.shape[0] / 128)
            out.append(np.clip(den + self.amount * (den - soft), 0, 255).round()
                       .astype(np.uint8))
        return np.stack(out)


class RestorerMethod:
    """The feed-forward restorer: one forward pass per batch of crops."""

    template = "flipnet"

    def __init__(self, folder: Path, *, name: str = "restorer", device: str = "auto",
                 batch_size: int = 16, **_unused):
        from flipnet.models.restorer import load_restorer

        self.name = name
        self.device = pick_device(device)
        self.model, self.cfg = load_restorer(folder, device=self.device)
        self.model.eval()
        self.size = int(getattr(self.cfg, "image_size", 128))
        self.batch_size = batch_size

    @torch.no_grad()
    def restore(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> restored uint8, in batches."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = to_tensor(np.asarray(crops[i:i + self.batch_size])).to(self.device)
            out.append(to_uint8(self.model(x)))
        return np.concatenate(out)


def _restorer(weights, **kw):
    return RestorerMethod(resolve_weights(weights or DEFAULT_WEIGHTS["restorer"]), **kw)


def _finetuned(weights, **kw):
    return RestorerMethod(resolve_weights(weights or DEFAULT_WEIGHTS["finetuned"]),
                          name="finetuned", **kw)


def _prior(weights, **kw):
    from flipnet.pipelines.prior_restore import PriorMethod

    return PriorMethod(resolve_weights(weights or DEFAULT_WEIGHTS["prior"]), **kw)


def _flipnet(weights, **kw):
    from flipnet.pipelines.flipnet_method import FlipNetMethod

    return FlipNetMethod(resolve_weights(weights or DEFAULT_WEIGHTS["flipnet"]), **kw)


METHODS = {
    "restorer": _restorer,
    "finetuned": _finetuned,
    "prior": _prior,
    "flipnet": _flipnet,
    "bicubic": lambda weights, **kw: BicubicMethod(),
    "classical": lambda weights, **kw: ClassicalMethod(),
    "input": lambda weights, **kw: InputMethod(),
}


def make_method(name: str, weights: str | None = None, **kwargs):
    """Build a restoration method by name (see ``METHODS``); kwargs go to its constructor."""
    if name not in METHODS:
        raise WeightsError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if "device" in kwargs:  # refuse a missing device even for methods that run on numpy
        resolve_device(kwargs["device"])
    return METHODS[name](weights, **kwargs)


def available_methods() -> list[str]:
    """Methods whose default weights are present (baselines always are)."""
    out = []
    for name in METHODS:
        w = DEFAULT_WEIGHTS.get(name)
        if w is None or (WEIGHTS_DIR / w).exists():
            out.append(name)
    return out
