"""Identity preservation: cosine similarity, angle (degrees) and euclidean distance between
dlib 128-D embeddings of restored faces and their references ("IDS" / "Deg" in BFR papers)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from flipnet.errors import FlipnetError, NoFaceError
from flipnet.faces.identity import DLIB_SAME_PERSON_DISTANCE, IdentityEmbedder, ImageLike


def _rows(a: np.ndarray) -> np.ndarray:
    """(D,) or (N, D) -> float64 (N, D)."""
    a = np.asarray(a, np.float64)
    return a[None] if a.ndim == 1 else a


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, D) embeddings -> (N,) (a (D,) pair gives (1,))."""
    a, b = _rows(a), _rows(b)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.clip((a * b).sum(1) / np.maximum(na * nb, 1e-12), -1.0, 1.0)


def angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise angle between embeddings in degrees -> (N,); exactly 0 for identical vectors.

    Uses 2*atan2(|u - v|, |u + v|) on unit vectors, stable where arccos(cos) is not (near 0).
    """
    a, b = _rows(a), _rows(b)
    u = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    v = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    rad = 2.0 * np.arctan2(np.linalg.norm(u - v, axis=1), np.linalg.norm(u + v, axis=1))
    return np.degrees(rad)


def euclidean_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise euclidean distance -> (N,); dlib calls a pair the same person below 0.6."""
    return np.linalg.norm(_rows(a) - _rows(b), axis=1)


def _name(item: ImageLike, i: int, kind: str) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"{kind}[{i}]"


def identity_similarity(pred_imgs: Sequence[ImageLike], ref_imgs: Sequence[ImageLike], *,
                        aligned: bool = True, embedder: IdentityEmbedder | None = None,
                        skip_no_face: bool = False, progress: bool = False) -> dict:
    """Identity similarity of restored vs reference faces (dlib embeddings), per pair and mean.

    Returns ``dict(mean_cos, mean_deg, mean_dist, same_person_rate, count, per_image, skipped)``;
    ``per_image`` holds ``{pred, ref, cos, deg, dist}``. With ``skip_no_face`` a pair whose face is
    not found is listed in ``skipped`` (name -> reason) instead of raising ``NoFaceError``.
    """
    if len(pred_imgs) != len(ref_imgs):
        raise FlipnetError(f"identity_similarity: {len(pred_imgs)} restored images but "
                           f"{len(ref_imgs)} references")
    embedder = embedder or IdentityEmbedder(aligned=aligned)
    per_image, skipped = [], {}
    pairs = list(zip(pred_imgs, ref_imgs, strict=True))
    for i, (pred, ref) in enumerate(tqdm(pairs, desc="identity", disable=not progress)):
        pred_name, ref_name = _name(pred, i, "pred"), _name(ref, i, "ref")
        try:
            e_pred = embedder.embed(pred, name=pred_name)  # (128,)
            e_ref = embedder.embed(ref, name=ref_name)
        except NoFaceError as e:
            if not skip_no_face:
                raise
            skipped[pred_name] = str(e)
            continue
        per_image.append({"pred": pred_name, "ref": ref_name,
                          "cos": float(cosine_similarity(e_pred, e_ref)[0]),
                          "deg": float(angle_degrees(e_pred, e_ref)[0]),
                          "dist": float(euclidean_distance(e_pred, e_ref)[0])})
    n = len(per_image)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_image])) if n else float("nan")

    same = float(np.mean([r["dist"] < DLIB_SAME_PERSON_DISTANCE for r in per_image])) if n \
        else float("nan")
    return {"mean_cos": mean("cos"), "mean_deg": mean("deg"), "mean_dist": mean("dist"),
            "same_person_rate": same, "count": n, "per_image": per_image, "skipped": skipped}
