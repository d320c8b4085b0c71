"""Landmark distance (LMD): mean euclidean distance between the 68 dlib landmarks of restored and
reference faces, in pixels or normalised by the reference's inter-ocular distance (eye centres).

Both images of a pair are fitted from the same face box (the reference's), so LMD measures how far
the restored face's geometry moved, not detector jitter. Aligned crops use a fixed box (default: the
whole crop); whole photos use dlib HOG detection on the reference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from flipnet.errors import FlipnetError, NoFaceError
from flipnet.faces.identity import (
    WHOLE_CROP,
    ImageLike,
    as_rgb,
    face_rectangle,
    load_dlib_model,
)

RIGHT_EYE = slice(36, 42)  # subject's right eye in the iBUG 68-point scheme (image left)
LEFT_EYE = slice(42, 48)
NORMALISATIONS = ("pixel", "interocular")


def _points(shape) -> np.ndarray:
    """dlib full_object_detection -> float64 (K, 2) (x, y)."""
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def landmarks68(image: ImageLike, *, aligned: bool = True, name: str | None = None,
                aligned_box: Sequence[float] = WHOLE_CROP, rect=None) -> np.ndarray:
    """68 dlib landmarks (x, y), float64 (68, 2); ``rect`` (a dlib.rectangle) overrides the box."""
    rgb, name = as_rgb(image, name)
    if rect is None:
        rect = face_rectangle(rgb, aligned=aligned, name=name, aligned_box=aligned_box)
    return _points(load_dlib_model("landmarks68")(rgb, rect))


def interocular_distance(points: np.ndarray) -> float:
    """Distance between the two eye centres of 68-point landmarks (68, 2)."""
    return float(np.linalg.norm(points[LEFT_EYE].mean(0) - points[RIGHT_EYE].mean(0)))


def pair_landmark_distance(pred_points: np.ndarray, ref_points: np.ndarray, *,
                           normalize: str = "pixel") -> float:
    """Mean point-to-point distance of two (68, 2) landmark sets, pixels or / inter-ocular."""
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
    d = float(np.linalg.norm(pred_points - ref_points, axis=1).mean())
    if normalize == "interocular":
        d /= max(interocular_distance(ref_points), 1e-6)
    return d


def _name(item: ImageLike, i: int, kind: str) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"{kind}[{i}]"


def landmark_distance(pred_imgs: Sequence[ImageLike], ref_imgs: Sequence[ImageLike], *,
                      aligned: bool = True, normalize: str = "pixel",
                      aligned_box: Sequence[float] = WHOLE_CROP, skip_no_face: bool = False,
                      progress: bool = False) -> dict:
    """LMD over pairs: ``dict(mean, normalize, count, per_image=[{pred, ref, lmd}], skipped)``."""
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
    if len(pred_imgs) != len(ref_imgs):
        raise FlipnetError(f"landmark_distance: {len(pred_imgs)} restored images but "
                           f"{len(ref_imgs)} references")
    per_image, skipped = [], {}
    pairs = list(zip(pred_imgs, ref_imgs, strict=True))
    for i, (pred, ref) in enumerate(tqdm(pairs, desc="landmarks", disable=not progress)):
        pred_rgb, pred_name = as_rgb(pred, _name(pred, i, "pred"))
        ref_rgb, ref_name = as_rgb(ref, _name(ref, i, "ref"))
        if pred_rgb.shape != ref_rgb.shape:
            raise FlipnetError(f"{pred_name}: size {pred_rgb.shape[1]}x{pred_rgb.shape[0]} differs "
                               f"from its reference {ref_name} "
                               f"({ref_rgb.shape[1]}x{ref_rgb.shape[0]}); LMD needs equal sizes")
        try:
            rect = face_rectangle(ref_rgb, aligned=aligned, name=ref_name, aligned_box=aligned_box)
        except NoFaceError as e:
            if not skip_no_face:
                raise
            skipped[pred_name] = str(e)
            continue
        ref_points = landmarks68(ref_rgb, rect=rect)  # (68, 2)
        pred_points = landmarks68(pred_rgb, rect=rect)
        per_image.append({"pred": pred_name, "ref": ref_name,
                          "lmd": pair_landmark_distance(pred_points, ref_points,
                                                        normalize=normalize)})
    mean = float(np.mean([r["lmd"] for r in per_image])) if per_image else float("nan")
    return {"mean": mean, "normalize": normalize, "count": len(per_image),
            "per_image": per_image, "skipped": skipped}
