"""Never make a good face worse: paste the restoration only where it changed the face.

A restorer works at its own size (128 px); a face larger than that, pasted back from the
restored crop, loses every detail above 128 px, so a sharp photo comes out softer than it went
in. The rule here: compare the model-size input crop with its restoration. Where they agree
(the restorer found nothing to fix: a sharp, clean face), the photo keeps its own pixels,
native detail included; where the restorer changed the face (blur removed, noise or JPEG
cleaned), the restoration is pasted. Per crop pixel,

    d = GaussianBlur(mean over RGB |restored - crop| / 255, sigma)
    w = clip((d - low) / (high - low), 0, 1)

and ``w`` scales the paste mask (``faces.paste.paste_faces(weights=...)``). The thresholds are
measured on training-split faces (docs/BENCHMARKS.md, "Do no harm"): ``low`` above what the
restorer changes on sharp faces, ``high`` below what it changes on degraded ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flipnet.errors import ConfigError


@dataclass(frozen=True)
class KeepDetailConfig:
    """Thresholds of the paste weight, in mean absolute 8-bit change / 255."""

    low: float = 2.0 / 255  # below: keep the photo
    high: float = 5.0 / 255  # above: paste the restoration
    sigma: float = 3.0  # Gaussian smoothing of the change map, in model-size crop px

    def __post_init__(self):
        if not 0 <= self.low < self.high <= 1 or self.sigma <= 0:
            raise ConfigError(f"keep_detail: need 0 <= low < high <= 1 and sigma > 0, got "
                              f"low={self.low}, high={self.high}, sigma={self.sigma}")


def change_map(crop: np.ndarray, restored: np.ndarray, sigma: float) -> np.ndarray:
    """float32 (S, S) ``d``: the smoothed mean absolute change / 255 from the uint8 (S, S, 3)
    model-size input ``crop`` to its restoration."""
    import cv2

    if crop.shape != restored.shape or crop.ndim != 3:
        raise ValueError(f"crop {crop.shape} and restored {restored.shape} must be the same "
                         "(S, S, 3)")
    change = np.abs(restored.astype(np.float32) - crop.astype(np.float32)).mean(axis=2) / 255
    return cv2.GaussianBlur(change, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def restoration_weight(crop: np.ndarray, restored: np.ndarray,
                       cfg: KeepDetailConfig = KeepDetailConfig()) -> np.ndarray:
    """float32 (S, S) map in [0, 1]: how much of ``restored`` to paste over the photo, from
    the uint8 (S, S, 3) model-size input ``crop`` and its restoration."""
    change = change_map(crop, restored, cfg.sigma)
    return np.clip((change - cfg.low) / (cfg.high - cfg.low), 0.0, 1.0).astype(np.float32)
