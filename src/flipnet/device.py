"""One place that turns a ``--device`` value into a usable ``torch.device``.

``auto`` picks CUDA, then Apple MPS, then the CPU. A named device must exist on this machine:
``cuda`` without a CUDA GPU, ``mps`` without MPS, ``cuda:3`` on a one-GPU machine, or a string
torch does not parse (``-1``) is a ``ConfigError`` with a one-line fix, never torch's assertion.
"""

from __future__ import annotations

import torch

from flipnet.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # what the CLI lists; cuda:N and xpu work too
_BACKENDS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _available(kind: str) -> bool:
    """Whether torch can use device type ``kind`` here."""
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return _mps_available()
    module = getattr(torch, kind, None)
    return bool(module is not None and getattr(module, "is_available", lambda: False)())


def resolve_device(name: str | torch.device | None = "auto", *, option: str = "--device"
                   ) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; a named device is checked to exist here, else a
    ``ConfigError`` naming ``option`` and the fix."""
    if isinstance(name, torch.device):
        device = name
    else:
        text = "auto" if name is None else str(name).strip().lower()
        if text == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            return torch.device("mps") if _mps_available() else torch.device("cpu")
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"{option} {str(name)[:40]!r} is not a device; use auto, cpu, cuda, "
                              f"cuda:N or mps") from None
    if device.type not in ("cpu", *_BACKENDS):
        raise ConfigError(f"{option} {str(name)[:40]!r}: flipnet runs on cpu, cuda or mps "
                          f"(or auto), not {device.type}")
    if not _available(device.type):
        label = _BACKENDS[device.type]
        raise ConfigError(f"{device.type} requested but no {label} device is available; use "
                          f"{option} cpu or auto")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{option} {device}: only {torch.cuda.device_count()} CUDA device(s) "
                          f"here (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device
