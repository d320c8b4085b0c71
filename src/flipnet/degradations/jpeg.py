"""JPEG compression through OpenCV, one uint8 image at a time (deterministic).

As in BasicSR's ``add_jpg_compression`` (GFPGAN, CodeFormer, DifFace), the image is encoded by
``cv2.imencode`` in BGR order (so OpenCV's YCbCr conversion sees the channels it expects) at an
integer quality and decoded again. Quality is drawn as an integer in ``[low, high]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from flipnet.degradations.noise import check_prob, check_range, draw_bernoulli, draw_int
from flipnet.errors import FlipnetError
from flipnet.io import to_tensor, to_uint8


@dataclass(frozen=True)
class JpegConfig:
    """JPEG quality range (integers, both ends included)."""

    quality: tuple[int, int] = (60, 100)
    prob: float = 1.0

    def __post_init__(self):
        check_range("jpeg.quality", self.quality, low=1, high=100)
        check_prob("jpeg.prob", self.prob)


def sample_jpeg_params(cfg: JpegConfig, generator: torch.Generator) -> dict | None:
    """Draw one image's JPEG quality, or None if the stage is skipped."""
    apply = draw_bernoulli(generator, cfg.prob)
    quality = draw_int(generator, int(cfg.quality[0]), int(cfg.quality[1]))
    return {"quality": quality} if apply else None


def jpeg_roundtrip_uint8(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode uint8 (H,W,3) RGB as JPEG at ``quality`` and decode it back to uint8 RGB."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise FlipnetError(f"JPEG encoding failed for an image of shape {rgb.shape}")
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def jpeg_compress(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress every image of x (N,3,H,W) in [-1,1] at ``quality``; same shape out."""
    rgb = to_uint8(x)  # (N,H,W,3)
    out = np.stack([jpeg_roundtrip_uint8(im, quality) for im in rgb])
    return to_tensor(out).to(x.device)


def apply_jpeg(x: torch.Tensor, params: dict | None) -> torch.Tensor:
    """Apply the JPEG stage described by ``params`` (None = unchanged)."""
    return x if params is None else jpeg_compress(x, params["quality"])
