"""Measure where dlib's 5-point predictor puts its landmarks on flipnet-template crops.

    python scripts/derive_dlib_chip_points.py --data out/prepared/utkface-128 --count 2000

dlib's face chip (``get_face_chip``, what its ResNet was trained on) is fixed by its own 5-point
landmarks (eye corners + nose base), which are not the FFHQ points of flipnet's template. So on a
seeded sample of aligned crops, seeded like ``IdentityEmbedder(aligned=True)`` (the whole crop as
the face box), this prints the 10 %-trimmed mean landmarks in [0, 1] crop coordinates (dlib rounds
each point to whole pixels, so a median would be quantised), left/right symmetrised: the constant
``DLIB5_IN_FLIPNET_CROP`` of ``flipnet.faces.dlib_resnet``.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import trim_mean

from flipnet.faces.identity import WHOLE_CROP, box_rectangle, load_dlib_model
from flipnet.io import list_images, load_image

MIRROR = [2, 3, 0, 1, 4]  # left/right swap of dlib's 5-point order


def measure(files: list, box: tuple = WHOLE_CROP) -> np.ndarray:
    """(N, 5, 2) dlib 5-point landmarks of each crop, normalised by its size."""
    predictor = load_dlib_model("landmarks5")
    out = []
    for f in files:
        rgb = load_image(f).rgb
        shape = predictor(rgb, box_rectangle(rgb.shape[:2], box))
        h, w = rgb.shape[:2]
        out.append([[p.x / w, p.y / h] for p in shape.parts()])
    return np.asarray(out, np.float64)


def main() -> None:
    """Print the symmetrised trimmed-mean points and their spread."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="out/prepared/utkface-128", help="aligned crops folder")
    ap.add_argument("--count", type=int, default=2000, help="sample size")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = ap.parse_args()
    files = list_images(args.data)
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in sorted(rng.choice(len(files), min(args.count, len(files)),
                                                 replace=False))]
    pts = measure(files)
    med = trim_mean(pts, 0.1, axis=0)  # (5, 2)
    mirrored = med[MIRROR] * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    sym = 0.5 * (med + mirrored)
    print(f"{len(files)} crops; asymmetry {np.abs(med - mirrored).max() / 2:.4f}")
    print("std per point:", np.std(pts, axis=0).round(4).tolist())
    print("DLIB5_IN_FLIPNET_CROP =", np.array2string(sym, precision=6, separator=", "))


if __name__ == "__main__":
    main()
