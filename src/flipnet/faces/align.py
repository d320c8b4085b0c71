"""Align a face to a 5-point template with a similarity transform (rotation, uniform scale, shift)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flipnet.errors import ConfigError
from flipnet.faces.template import check_size, get_template

BORDER_MODES = ("reflect", "constant", "replicate")


@dataclass
class AlignedFace:
    """An aligned crop and the 2x3 maps image -> crop (``affine``) and crop -> image (``inverse``)."""

    crop: np.ndarray  # (size, size, 3) uint8
    affine: np.ndarray  # (2, 3) float64, image coords -> crop coords
    inverse: np.ndarray  # (2, 3) float64, crop coords -> image coords


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) mapping ``src`` (N, 2) onto ``dst`` (N, 2) (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("source landmarks are degenerate (all at one point)")
    cov = d_c.T @ s_c / len(src)  # (2, 2)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # forbid reflections
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sing) @ sign) / var_s
    shift = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, shift[:, None]])


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine map."""
    full = np.vstack([np.asarray(affine, np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2, 3) map x -> outer(inner(x))."""
    a = np.vstack([np.asarray(outer, np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(inner, np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def _border(mode: str) -> int:
    import cv2

    if mode not in BORDER_MODES:
        raise ConfigError(f"unknown border mode {mode!r}; choose one of {BORDER_MODES}")
    return {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT,
            "replicate": cv2.BORDER_REPLICATE}[mode]


def warp_to_crop(rgb: np.ndarray, affine: np.ndarray, size: int, *, border: str = "reflect",
                 border_value: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Warp ``rgb`` by ``affine`` into a (size, size, 3) crop, area-averaging when shrinking >2x."""
    import cv2

    affine = np.asarray(affine, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))  # crop px per image px
    src = rgb
    if scale < 0.5:
        # shrink only the region the crop sees, with INTER_AREA, so the final warp is ~1:1
        h, w = rgb.shape[:2]
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
        inv = invert_affine(affine)
        pts = corners @ inv[:, :2].T + inv[:, 2]
        margin = 2.0 / scale
        x0 = int(np.clip(np.floor(pts[:, 0].min() - margin), 0, w - 1))
        y0 = int(np.clip(np.floor(pts[:, 1].min() - margin), 0, h - 1))
        x1 = int(np.clip(np.ceil(pts[:, 0].max() + margin), x0 + 1, w))
        y1 = int(np.clip(np.ceil(pts[:, 1].max() + margin), y0 + 1, h))
        region = rgb[y0:y1, x0:x1]
        rw, rh = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        src = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        fx, fy = rw / (x1 - x0), rh / (y1 - y0)
        # resized-region pixel -> image pixel (cv2 pixel-centre convention)
        to_image = np.array([[1 / fx, 0, (0.5 / fx - 0.5) + x0],
                             [0, 1 / fy, (0.5 / fy - 0.5) + y0]])
        affine = compose_affine(affine, to_image)
    return cv2.warpAffine(np.ascontiguousarray(src), affine, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=_border(border), borderValue=border_value)


def align_face(rgb: np.ndarray, landmarks5: np.ndarray, *, size: int = 128,
               template: str = "flipnet", border: str = "reflect") -> AlignedFace:
    """Warp the face with these 5 landmarks onto the template: (size, size, 3) crop + affines."""
    size = check_size(size)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"align_face expects uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    landmarks5 = np.asarray(landmarks5, np.float64)
    if landmarks5.shape != (5, 2):
        raise ValueError(f"align_face expects landmarks5 of shape (5, 2), got {landmarks5.shape}")
    affine = similarity_transform(landmarks5, get_template(template, size))  # image -> crop
    crop = warp_to_crop(rgb, affine, size, border=border)
    return AlignedFace(crop=crop, affine=affine, inverse=invert_affine(affine))
