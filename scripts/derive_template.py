"""Derive flipnet's canonical 5-point face template from UTKFace (docs/TEMPLATE.md).

    python scripts/derive_template.py --data ../shared/data/utkface --count 5000 --seed 0 \
        --out src/flipnet/data/template_utkface.json

Steps: detect the main face (dlib HOG on a reflect-padded copy) and its 5 landmarks on a seeded
random sample; normalise to [0, 1] by the image size (UTKFace frames are 200 x 200); take the
coordinate-wise median (framing), then the median of every shape similarity-aligned to it (shape);
make it left/right symmetric; record counts and spread; measure the sharpness of every sample
aligned to the new template (the distribution behind prepare's blur threshold).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flipnet.faces.align import similarity_transform, warp_to_crop
from flipnet.faces.detect import POINT_NAMES, detect_faces, main_face
from flipnet.io import list_images, load_image, write_bytes_atomic
from flipnet.pipelines.prepare import sharpness

MIRROR = [1, 0, 2, 4, 3]  # left/right swap of the FFHQ point order
PERCENTILES = (1, 2, 5, 10, 25, 50, 75, 90, 99)


def apply_affine(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(N, 2) points mapped by a (2, 3) affine."""
    return points @ affine[:, :2].T + affine[:, 2]


def detect_sample(files: list[Path], pad: float) -> tuple[np.ndarray, list[Path], int]:
    """Normalised (M, 5, 2) landmarks of the images where a face was found, their files, misses."""
    shapes, used, missed = [], [], 0
    for f in tqdm(files, desc="landmarks", unit="img"):
        rgb = load_image(f).rgb
        face = main_face(detect_faces(rgb, pad=pad), rgb.shape)
        if face is None:
            missed += 1
            continue
        h, w = rgb.shape[:2]
        shapes.append(face.landmarks5 / np.array([w, h], np.float32))
        used.append(f)
    return np.stack(shapes).astype(np.float64), used, missed


def robust_template(shapes: np.ndarray) -> tuple[np.ndarray, dict]:
    """Median framing + Procrustes-median shape, symmetrised; returns (5, 2) and diagnostics."""
    framing = np.median(shapes, axis=0)  # (5, 2) where the points sit in the frame
    aligned = np.stack([apply_affine(s, similarity_transform(s, framing)) for s in shapes])
    shape = np.median(aligned, axis=0)  # (5, 2) in the framing's position and scale
    mirrored = shape[MIRROR] * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    template = 0.5 * (shape + mirrored)
    info = {
        "asymmetry_before_symmetrising": float(np.abs(shape - mirrored).max() / 2),
        "framing_std": np.std(shapes, axis=0).round(5).tolist(),
        "framing_mad": np.median(np.abs(shapes - framing), axis=0).round(5).tolist(),
        "shape_std_after_similarity_alignment": np.std(aligned, axis=0).round(5).tolist(),
    }
    return template, info


def fit_residuals(shapes: np.ndarray, template: np.ndarray, size: int = 128) -> np.ndarray:
    """RMS landmark error (px at ``size``) of each shape after its similarity fit to the template."""
    out = []
    for s in shapes:
        fit = apply_affine(s, similarity_transform(s, template))
        out.append(np.sqrt(((fit - template) ** 2).sum(1).mean()) * size)
    return np.array(out)


def sharpness_sample(files: list[Path], shapes: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Sharpness of each file aligned (128 px) with the new template's points."""
    values = []
    for f, s in tqdm(list(zip(files, shapes)), desc="sharpness", unit="img"):
        rgb = load_image(f).rgb
        h, w = rgb.shape[:2]
        affine = similarity_transform(s * np.array([w, h]), template * 128)  # image -> crop
        values.append(sharpness(warp_to_crop(rgb, affine, 128)))
    return np.array(values)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: derive the template and write its JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/utkface", help="UTKFace folder")
    ap.add_argument("--count", type=int, default=5000, help="images sampled (0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--pad", type=float, default=0.25, help="detection padding (fraction)")
    ap.add_argument("--out", default="src/flipnet/data/template_utkface.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()

    files = list_images(args.data)
    rng = np.random.default_rng(args.seed)
    if 0 < args.count < len(files):
        files = [files[i] for i in sorted(rng.choice(len(files), args.count, replace=False))]
    shapes, used, missed = detect_sample(files, args.pad)
    template, spread = robust_template(shapes)
    residual = fit_residuals(shapes, template)
    sharp = sharpness_sample(used, shapes, template)

    record = {
        "name": "flipnet",
        "description": "5-point face template derived from UTKFace aligned & cropped (200x200); "
                       "normalised [0, 1] crop coordinates; multiply by the crop size.",
        "points": list(POINT_NAMES),
        "landmarks5": template.round(6).tolist(),
        "derivation": {
            "script": "scripts/derive_template.py", "data": "utkface", "seed": args.seed,
            "images_in_folder": len(list_images(args.data)), "images_sampled": len(files),
            "faces_used": len(used), "no_face": missed, "detector": "hog",
            "pad": args.pad, "pad_mode": "reflect",
            "method": "coordinate-wise median (framing); median of shapes similarity-aligned "
                      "to it (Procrustes median); averaged with its left/right mirror",
            **spread,
            "fit_rms_px_at_128": {str(p): round(float(np.percentile(residual, p)), 3)
                                  for p in (50, 90, 99)},
            "sharpness_percentiles_at_128": {str(p): round(float(np.percentile(sharp, p)), 2)
                                             for p in PERCENTILES},
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    write_bytes_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
