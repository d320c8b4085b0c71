"""Face verification accuracy on LFW-style folders (one folder per person), LFW protocol style.

Pairs are drawn deterministically from a ``numpy.random.Generator``: positives (two images of one
person with >= 2 images) and negatives (two different people). Embeddings are dlib's 128-D
descriptors of whole images (HOG detection, the face nearest the centre, which is the labelled
person in LFW; when the detector misses, the mean HOG box of deep-funneled LFW is used and
counted). Verification says "same person" when the euclidean distance is below a threshold, chosen
by 10-fold cross validation as in the LFW protocol (Huang et al. 2007), and also reported at
dlib's fixed 0.6.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flipnet.errors import ConfigError, NoFaceError
from flipnet.faces.identity import DLIB_SAME_PERSON_DISTANCE, IdentityEmbedder, as_rgb
from flipnet.io import list_images

# mean dlib HOG box (upsample 1) over deep-funneled LFW 250x250 images, as fractions (l, t, r, b)
LFW_FALLBACK_BOX = (0.28, 0.32, 0.70, 0.74)


@dataclass(frozen=True)
class Pair:
    """Two image paths and whether they show the same person."""

    path_a: Path
    path_b: Path
    same: bool


def people_images(lfw_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """Person name -> sorted image paths, for every sub-folder of ``lfw_dir`` holding images."""
    root = Path(lfw_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: LFW folder not found (expected one sub-folder per person)")
    people = {d.name: list_images(d, recursive=False) for d in sorted(root.iterdir()) if d.is_dir()}
    people = {k: v for k, v in people.items() if v}
    if len(people) < 2:
        raise ConfigError(f"{root}: needs at least 2 person folders with images, "
                          f"found {len(people)}")
    return people


def make_pairs(lfw_dir: str | os.PathLike, n_pos: int, n_neg: int, *,
               rng: np.random.Generator) -> list[Pair]:
    """``n_pos`` distinct same-person pairs then ``n_neg`` distinct different-person pairs."""
    people = people_images(lfw_dir)
    names = list(people)
    multi = [n for n in names if len(people[n]) >= 2]
    max_pos = sum(len(people[n]) * (len(people[n]) - 1) // 2 for n in multi)
    if n_pos > max_pos:
        raise ConfigError(f"{lfw_dir}: asked for {n_pos} positive pairs, only {max_pos} exist")
    pos: dict[tuple[Path, Path], None] = {}  # insertion-ordered set
    while len(pos) < n_pos:
        imgs = people[multi[rng.integers(len(multi))]]
        i, j = sorted(rng.choice(len(imgs), size=2, replace=False))
        pos[(imgs[i], imgs[j])] = None
    neg: dict[tuple[Path, Path], None] = {}
    while len(neg) < n_neg:
        a, b = sorted(rng.choice(len(names), size=2, replace=False))
        imgs_a, imgs_b = people[names[a]], people[names[b]]
        neg[(imgs_a[rng.integers(len(imgs_a))], imgs_b[rng.integers(len(imgs_b))])] = None
    return ([Pair(a, b, True) for a, b in pos] + [Pair(a, b, False) for a, b in neg])


def accuracy_at(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Fraction of pairs classified right when "same person" means distance < threshold."""
    return float(np.mean((np.asarray(distances) < threshold) == np.asarray(same, bool)))


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """Threshold (midpoint between sorted distances) with the highest accuracy on these pairs."""
    d = np.sort(np.unique(distances))
    candidates = np.concatenate([[d[0] - 1e-6], (d[:-1] + d[1:]) / 2, [d[-1] + 1e-6]])
    accs = [accuracy_at(distances, same, t) for t in candidates]
    return float(candidates[int(np.argmax(accs))])


def kfold_accuracy(distances: np.ndarray, same: np.ndarray, *, folds: int = 10) -> dict:
    """LFW-protocol accuracy: threshold fitted on k-1 folds, tested on the held-out one.

    Folds are stratified (positives and negatives dealt round-robin). Returns
    ``dict(mean, std, fold_accuracies, thresholds)``.
    """
    distances = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    fold_of = np.empty(len(same), int)
    for label in (True, False):
        idx = np.flatnonzero(same == label)
        fold_of[idx] = np.arange(len(idx)) % folds
    accs, thresholds = [], []
    for k in range(folds):
        test = fold_of == k
        if not test.any():
            continue
        t = best_threshold(distances[~test], same[~test])
        thresholds.append(t)
        accs.append(accuracy_at(distances[test], same[test], t))
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
            "fold_accuracies": accs, "thresholds": thresholds}


def embed_images(paths: list[Path], embedder: IdentityEmbedder, *,
                 progress: bool = True) -> tuple[dict[Path, np.ndarray], list[Path]]:
    """Embed each path once (detect, else ``LFW_FALLBACK_BOX``) -> (embeddings, fallbacks)."""
    embeddings, fallbacks = {}, []
    for path in tqdm(paths, desc="embedding LFW", disable=not progress):
        rgb, name = as_rgb(path)
        try:
            embeddings[path] = embedder.embed(rgb, name=name)
        except NoFaceError:
            h, w = rgb.shape[:2]
            left, top, right, bottom = LFW_FALLBACK_BOX
            box = (round(left * w), round(top * h), round(right * w) - 1, round(bottom * h) - 1)
            embeddings[path] = embedder.embed(rgb, name=name, box=box)
            fallbacks.append(path)
    return embeddings, fallbacks


def evaluate_lfw(lfw_dir: str | os.PathLike, *, n_pos: int = 1000, n_neg: int = 1000,
                 seed: int = 0, folds: int = 10, upsample: int = 1,
                 progress: bool = True) -> dict:
    """Verification accuracy of dlib embeddings on pairs drawn from ``lfw_dir`` (see module doc)."""
    start = time.perf_counter()
    pairs = make_pairs(lfw_dir, n_pos, n_neg, rng=np.random.default_rng(seed))
    unique = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b)})
    embedder = IdentityEmbedder(aligned=False, upsample=upsample, pick="center")
    emb, fallbacks = embed_images(unique, embedder, progress=progress)
    a = np.stack([emb[p.path_a] for p in pairs])  # (P, 128)
    b = np.stack([emb[p.path_b] for p in pairs])
    distances = np.linalg.norm(a.astype(np.float64) - b, axis=1)  # (P,)
    same = np.array([p.same for p in pairs])
    cv = kfold_accuracy(distances, same, folds=folds)
    return {
        "accuracy_mean": cv["mean"], "accuracy_std": cv["std"],
        "fold_accuracies": cv["fold_accuracies"], "thresholds": cv["thresholds"],
        "accuracy_at_0.6": accuracy_at(distances, same, DLIB_SAME_PERSON_DISTANCE),
        "n_pos": n_pos, "n_neg": n_neg, "seed": seed, "folds": folds, "n_images": len(unique),
        "detector_fallbacks": len(fallbacks),
        "mean_distance_same": float(distances[same].mean()) if same.any() else float("nan"),
        "mean_distance_different": float(distances[~same].mean()) if (~same).any()
        else float("nan"),
        "seconds": time.perf_counter() - start,
    }
