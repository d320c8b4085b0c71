"""A small learned face locator: the main face of a photo as 5 landmarks + a presence logit.

The fallback of the detection chain (``pipelines.photo.detect_photo_faces``) for photos where every
dlib detector failed: faces degraded with CodeFormer's published 512 px ranges keep 17-34 px of
information, below what HOG and dlib's CNN see (docs/BENCHMARKS.md, "Detection of degraded
faces"). The photo is letterboxed to ``image_size`` (long side scaled to it, the rest padded with
mid-gray); a plain CNN of stride-2 stages, its last three merged top-down (FPN, Lin et al. CVPR
2017), predicts on a grid (16 x 16 for 128 px) a face-centre logit per cell and the five points
(FFHQ / facexlib order, ``faces.detect.POINT_NAMES``) as offsets from the cell's centre, as
CenterNet does for objects (Zhou et al., "Objects as Points", 2019). ``locate`` keeps the cell
with the highest logit: one face, the main face of a photo, which is all the fallback needs; that
logit is the presence score. ``presence_threshold`` is chosen on train-split validation data when
the weights are exported (``training.face_locator``) and is saved with them.

Folder layout as every flipnet weights folder: ``config.json`` + fp16 safetensors (``weights``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flipnet.config import load_config, save_config
from flipnet.errors import ConfigError, WeightsError
from flipnet.io import to_tensor
from flipnet.weights import load_into, load_state_dict, save_state_dict

PAD_VALUE = 128  # letterbox padding (mid-gray: 0 in the [-1, 1] range the net sees)
FLIP_ORDER = (1, 0, 2, 4, 3)  # the five points of a mirrored face (left and right swap)


@dataclass(frozen=True)
class FaceLocatorConfig:
    """Architecture of the locator and its acceptance threshold; saved as ``config.json``."""

    image_size: int = 128  # letterbox side; a multiple of 2 ** len(widths)
    widths: tuple[int, ...] = (16, 32, 48, 64, 96)  # channels of each stride-2 stage
    neck: int = 48  # channels where the last three stages merge (at the grid's resolution)
    presence_threshold: float = 0.5  # accept a face when sigmoid(logit) > this

    def grid(self) -> int:
        """Side of the output grid (the third-last stage: image_size / 2^(stages - 2))."""
        return self.image_size // 2 ** (len(self.widths) - 2)

    def validate(self) -> None:
        """``ConfigError`` naming the first inconsistent setting."""
        if not 3 <= len(self.widths) <= 8 or any(not 1 <= w <= 1024 for w in self.widths):
            raise ConfigError(f"FaceLocatorConfig.widths must be 3-8 entries in 1..1024, got "
                              f"{self.widths}")
        if not 16 <= self.image_size <= 1024 or self.image_size % 2 ** len(self.widths):
            raise ConfigError(f"FaceLocatorConfig.image_size {self.image_size} must be in "
                              f"16..1024 and a multiple of 2^{len(self.widths)} (one halving "
                              "per stage)")
        if not 1 <= self.neck <= 1024:
            raise ConfigError(f"FaceLocatorConfig.neck must be in 1..1024, got {self.neck}")
        if not 0.0 <= self.presence_threshold <= 1.0:
            raise ConfigError(f"FaceLocatorConfig.presence_threshold must be in [0, 1], got "
                              f"{self.presence_threshold}")


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class FaceLocator(nn.Module):
    """Letterboxed photo (B, 3, S, S) in [-1, 1] -> a grid of face-centre logits and, per cell,
    the five points as offsets from the cell centre (in cells); ``locate`` decodes the best."""

    def __init__(self, cfg: FaceLocatorConfig):
        super().__init__()
        cfg.validate()
        self.stages, c = nn.ModuleList(), 3
        for i, w in enumerate(cfg.widths):  # the first stage (full resolution) is one conv
            self.stages.append(nn.Sequential(_conv(c, w, 2), *([_conv(w, w, 1)] if i else [])))
            c = w
        self.lateral = nn.ModuleList(nn.Conv2d(w, cfg.neck, 1) for w in cfg.widths[-3:])
        self.merge = _conv(cfg.neck, cfg.neck, 1)
        self.head = nn.Conv2d(cfg.neck, 11, 1)  # centre logit + 5 x (dx, dy)
        with torch.no_grad():
            self.head.weight[1:].zero_()  # points start at the cell centre
            self.head.bias.zero_()
            self.head.bias[0] = -4.0  # a face centre is rare among the cells (CenterNet's prior)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) -> centre logits (B, G, G), point offsets (B, 5, 2, G, G) in cells."""
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        p = self.lateral[2](feats[-1])  # top-down merge of the last three stages (FPN)
        for lateral, f in zip(self.lateral[1::-1], feats[-2:-4:-1]):
            p = F.interpolate(p, scale_factor=2.0, mode="nearest") + lateral(f)
        out = self.head(self.merge(p))  # (B, 11, G, G)
        b, _, g, _ = out.shape
        return out[:, 0], out[:, 1:].reshape(b, 5, 2, g, g)

    def locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) -> points (B, 5, 2) in [0, 1] letterbox units (``to_unit``) from the
        cell with the highest centre logit, and that logit (B,)."""
        heat, offsets = self(x)
        return decode(heat, offsets)


def decode(heat: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, G, G) logits + (B, 5, 2, G, G) offsets -> (points (B, 5, 2) in units, logit (B,)):
    the best cell's centre plus its offsets (cell c spans units [c / G, (c + 1) / G])."""
    b, g = heat.shape[0], heat.shape[-1]
    logit, idx = heat.reshape(b, -1).max(dim=1)
    iy, ix = idx // g, idx % g
    off = offsets[torch.arange(b), :, :, iy, ix]  # (B, 5, 2)
    cell = torch.stack([ix, iy], dim=-1)[:, None].to(off.dtype)  # (B, 1, 2)
    return (cell + off + 0.5) / g, logit


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) -> (uint8 (size, size, 3), affine (2, 3)): the image scaled so its long
    side is ``size``, centred on mid-gray; ``affine`` maps image pixels to letterbox pixels."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1
                       else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    dx, dy = (size - nw) // 2, (size - nh) // 2
    out[dy:dy + nh, dx:dx + nw] = small
    # cv2.resize maps pixel centres: x' = (x + 0.5) * nw / w - 0.5
    sx, sy = nw / w, nh / h
    affine = np.array([[sx, 0.0, dx + 0.5 * sx - 0.5], [0.0, sy, dy + 0.5 * sy - 0.5]])
    return out, affine


def to_unit(points: np.ndarray, size: int) -> np.ndarray:
    """Letterbox pixel coordinates -> the [0, 1] units the net predicts ((x + 0.5) / size)."""
    return (np.asarray(points, np.float64) + 0.5) / size


def from_unit(units: np.ndarray, size: int) -> np.ndarray:
    """The net's [0, 1] units -> letterbox pixel coordinates (inverse of ``to_unit``)."""
    return np.asarray(units, np.float64) * size - 0.5


def to_input(boxed: np.ndarray) -> torch.Tensor:
    """uint8 (S, S, 3) or (N, S, S, 3) letterboxes -> float (N, 3, S, S) in [-1, 1]."""
    return to_tensor(boxed)


@torch.no_grad()
def locate_face(model: FaceLocator, cfg: FaceLocatorConfig,
                rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """The main face of a uint8 (H, W, 3) photo: (landmarks5 (5, 2) float32 in image pixels,
    presence probability). Accept it only when the probability > ``cfg.presence_threshold``."""
    boxed, affine = letterbox(np.asarray(rgb), cfg.image_size)
    device = next(model.parameters()).device
    points, logit = model.locate(to_input(boxed).to(device))
    pts = from_unit(points[0].float().cpu().numpy(), cfg.image_size)  # (5, 2) letterbox px
    image_pts = (pts - affine[:, 2]) / np.diag(affine[:, :2])
    return image_pts.astype(np.float32), float(torch.sigmoid(logit[0]))


def save_face_locator(folder: str | os.PathLike, model: FaceLocator,
                      cfg: FaceLocatorConfig) -> Path:
    """Write ``config.json`` + fp16 safetensors of a locator; returns the folder."""
    folder = Path(folder)
    save_state_dict(folder, model.state_dict())
    save_config(cfg, folder / "config.json")
    return folder


def load_face_locator(folder: str | os.PathLike, device: str | torch.device = "cpu"
                      ) -> tuple[FaceLocator, FaceLocatorConfig]:
    """Rebuild a locator from its folder (eval mode, float32); ``WeightsError`` on mismatch."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json (not a flipnet face-locator folder)")
    try:
        cfg = load_config(FaceLocatorConfig, folder / "config.json")
        model = FaceLocator(cfg)
    except ConfigError as e:
        raise WeightsError(f"{folder}: invalid face-locator config ({e})") from None
    load_into(model, load_state_dict(folder), str(folder))
    return model.to(device).eval(), cfg
