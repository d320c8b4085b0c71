"""Restoration methods as ``FaceMethod`` objects, built by name from a plain dict of factories.

``restorer``  the fast feed-forward restorer (one forward pass; weights/restorer-128)
``finetuned`` the same network after unsupervised fine-tuning (weights/restorer-128-finetuned)
``prior``     DifFace-style restoration with the unconditional prior alone: diffuse the input to
              an intermediate step and sample back with low-pass guidance (weights/prior-latent-128)
``flipnet``   FLIPNET restoration mode: the prior + BoostHub/LoRA/face-embedding adapters,
              sampled with the LQ as the condition stream (weights/flipnet-latent-128; listed by
              ``available_methods`` only once trained weights are there)
``bicubic``   baseline: down x4 and bicubic back up (what a plain upscaler gives)
``classical`` baseline: OpenCV non-local means, then an unsharp mask
``input``     baseline: the input itself

``make_method`` is strict: an option is ``None`` when the caller did not give it, and a method
given an option it does not use (``steps``/``seed``/``fidelity`` for a one-pass method,
``weights`` for a baseline, ``backend="onnx"`` for anything but the one-pass restorers) raises
``ConfigError`` naming it, instead of ignoring it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from flipnet.device import resolve_device
from flipnet.errors import ConfigError, WeightsError
from flipnet.io import to_tensor, to_uint8
from flipnet.weights import DEFAULT_WEIGHTS, find_weights, resolve_weights

BACKENDS = ("torch", "onnx")
SAMPLING_METHODS = ("prior", "flipnet")  # the methods that use steps, seed and fidelity
ONNX_METHODS = ("restorer", "finetuned")  # the methods --backend onnx can run
BASELINES = ("bicubic", "classical", "input")  # the methods without weights


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
                 batch_size: int = 16):
        from flipnet.models.restorer import load_restorer

        self.name = name
        self.device = resolve_device(device)
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


def _restorer(weights: str | None, *, device: str, batch_size: int) -> RestorerMethod:
    return RestorerMethod(resolve_weights(weights or DEFAULT_WEIGHTS["restorer"]), device=device,
                          batch_size=batch_size)


def _finetuned(weights: str | None, *, device: str, batch_size: int) -> RestorerMethod:
    return RestorerMethod(resolve_weights(weights or DEFAULT_WEIGHTS["finetuned"]),
                          name="finetuned", device=device, batch_size=batch_size)


def _prior(weights: str | None, *, device: str, batch_size: int, **sampling):
    """``sampling``: the steps / seed / fidelity given; ``PriorMethod`` checks the names."""
    from flipnet.pipelines.prior_restore import PriorMethod

    return PriorMethod(resolve_weights(weights or DEFAULT_WEIGHTS["prior"]), device=device,
                       batch_size=batch_size, **sampling)


def _flipnet(weights: str | None, *, device: str, batch_size: int, **sampling):
    """``sampling``: the steps / seed / fidelity given; ``FlipNetMethod`` checks the names."""
    from flipnet.pipelines.flipnet_method import FlipNetMethod

    return FlipNetMethod(resolve_weights(weights or DEFAULT_WEIGHTS["flipnet"]), device=device,
                         batch_size=batch_size, **sampling)


# name -> factory(weights, *, device, batch_size[, steps, seed, fidelity])
METHODS = {
    "restorer": _restorer,
    "finetuned": _finetuned,
    "prior": _prior,
    "flipnet": _flipnet,
    "bicubic": lambda weights, *, device, batch_size: BicubicMethod(),
    "classical": lambda weights, *, device, batch_size: ClassicalMethod(),
    "input": lambda weights, *, device, batch_size: InputMethod(),
}


def _unused_option(name: str, option: str) -> ConfigError:
    """The one-line error for a restorer or baseline given an option it does not use."""
    kind = "a one-pass restorer" if name in ONNX_METHODS else "a fixed baseline"
    return ConfigError(f"method {name!r} does not use --{option} ({kind}); drop it")


def make_method(name: str, weights: str | None = None, *, device: str = "auto",
                batch_size: int = 16, steps: int | None = None, seed: int | None = None,
                fidelity: float | None = None, backend: str = "torch"):
    """Build a restoration method by name (see ``METHODS``).

    ``None`` means not given: the diffusion methods (prior, flipnet) then take their own
    defaults. An option the method does not use is a ``ConfigError`` naming it (``steps``,
    ``seed``, ``fidelity`` are for prior and flipnet; ``weights`` is not for the baselines;
    ``backend="onnx"`` runs only restorer and finetuned)."""
    if name not in METHODS:
        raise WeightsError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    resolve_device(device)  # refuse a missing device even for methods that run on numpy
    sampling = {k: v for k, v in (("steps", steps), ("seed", seed), ("fidelity", fidelity))
                if v is not None}
    if sampling and name not in SAMPLING_METHODS:
        raise _unused_option(name, next(iter(sampling)))
    if weights is not None and name in BASELINES:
        raise _unused_option(name, "weights")
    if backend == "onnx":
        if name not in ONNX_METHODS:
            raise ConfigError(f"method {name!r} has no onnx backend (--backend onnx runs "
                              f"{' and '.join(ONNX_METHODS)} only); drop --backend onnx")
        from flipnet.pipelines.onnx_method import OnnxRestorerMethod

        return OnnxRestorerMethod(resolve_weights(weights or DEFAULT_WEIGHTS[name]), name=name,
                                  batch_size=batch_size, device=device)
    return METHODS[name](weights, device=device, batch_size=batch_size, **sampling)


def make_method_from_spec(spec: str, *, device: str = "cpu", steps: int | None = None,
                          seed: int | None = None):
    """A method from a benchmark spec, ``NAME`` or ``NAME@WEIGHTS``; ``steps`` and ``seed`` reach
    only the sampling methods, so one call serves a list of mixed methods."""
    name, _, weights = spec.partition("@")
    sampling = {"steps": steps, "seed": seed} if name in SAMPLING_METHODS else {}
    return make_method(name, weights or None, device=device, **sampling)


def available_methods() -> list[str]:
    """Methods whose default weights are present (baselines always are)."""
    out = []
    for name in METHODS:
        w = DEFAULT_WEIGHTS.get(name)
        if w is None or find_weights(w) is not None:
            out.append(name)
    return out
