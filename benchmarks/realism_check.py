"""Do the distribution metrics tell clean faces from degraded ones, and not from clean ones?

Draws 2n UTKFace images (seeded), splits them into halves A and B, degrades B with a named
preset (default ``codeformer``, blur rescaled to the 200 px crops), and prints for
A vs B (same distribution) and A vs degraded B: the low-level NSS Frechet distance
(``lowlevel_fd``), KID in the same feature space, the classifier two-sample test accuracy with
its 95% Wilson interval, and the mean NIQE / BRISQUE of each set.

    python benchmarks/realism_check.py [--n 200] [--seed 0] [--preset codeformer]
                                       [--data ../shared/data/utkface] [--json out/realism.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flipnet.degradations.pipeline import degrade_images
from flipnet.degradations.presets import preset_for_size
from flipnet.io import list_images, load_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.metrics.brisque import brisque
from flipnet.metrics.frechet import frechet_distance, kernel_inception_distance
from flipnet.metrics.mscn import lowlevel_features
from flipnet.metrics.niqe import niqe
from flipnet.metrics.two_sample import classifier_two_sample_test

REPO = Path(__file__).resolve().parents[1]


def load_sample(folder: Path, count: int, seed: int) -> np.ndarray:
    """``count`` images drawn without replacement (seeded) -> uint8 (count, H, W, 3)."""
    files = list_images(folder)
    pick = np.random.default_rng(seed).choice(len(files), size=count, replace=False)
    return np.stack([load_image(files[i]).rgb for i in tqdm(pick, desc="load", leave=False)])


def degrade_set(images: np.ndarray, preset: str, seed: int, *, batch: int = 50) -> np.ndarray:
    """Degrade uint8 images with a preset whose blur is rescaled to their size (per-image seeds)."""
    cfg = preset_for_size(preset, images.shape[1])
    out = [to_uint8(degrade_images(to_tensor(images[i:i + batch]), cfg, seed=seed, start=i)[0])
           for i in tqdm(range(0, len(images), batch), desc=f"degrade ({preset})", leave=False)]
    return np.concatenate(out)


def compare(name: str, a: np.ndarray, b: np.ndarray, feats_a: np.ndarray, feats_b: np.ndarray,
            seed: int) -> dict:
    """All distribution numbers for one pair of sets."""
    t0 = time.perf_counter()
    kid = kernel_inception_distance(feats_a, feats_b, generator=np.random.default_rng(seed),
                                    num_subsets=100, subset_size=min(len(a), len(b), 2000) // 2)
    c2st = classifier_two_sample_test(a, b, seed=seed)
    return {"pair": name, "n_a": len(a), "n_b": len(b),
            "lowlevel_fd": frechet_distance(feats_a, feats_b),
            "kid_mean": kid.mean, "kid_std": kid.std,
            "c2st_accuracy": c2st.accuracy, "c2st_ci": [c2st.ci_low, c2st.ci_high],
            "c2st_n_test": c2st.n_test, "c2st_p_value": c2st.p_value,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    """Load, degrade, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "utkface")
    ap.add_argument("--n", type=int, default=200, help="images per half")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="codeformer")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    images = load_sample(args.data, 2 * args.n, args.seed)
    half_a, half_b = images[: args.n], images[args.n:]
    degraded_b = degrade_set(half_b, args.preset, args.seed)
    feats = {k: lowlevel_features(v) for k, v in
             tqdm({"A": half_a, "B": half_b, "B_lq": degraded_b}.items(), desc="features")}
    rows = [compare("utkface A vs B", half_a, half_b, feats["A"], feats["B"], args.seed),
            compare(f"utkface A vs {args.preset}(B)", half_a, degraded_b, feats["A"],
                    feats["B_lq"], args.seed)]
    quality = {k: {"niqe": float(np.mean(niqe(v))), "brisque": float(np.mean(brisque(v)))}
               for k, v in {"A": half_a, "B": half_b, "B_lq": degraded_b}.items()}

    print(f"{'pair':34s} {'lowlevel_fd':>11s} {'KID (+-std)':>18s} {'C2ST acc [95% CI]':>24s}")
    for r in rows:
        print(f"{r['pair']:34s} {r['lowlevel_fd']:11.4f} {r['kid_mean']:9.4f} +-{r['kid_std']:6.4f}"
              f"   {r['c2st_accuracy']:.3f} [{r['c2st_ci'][0]:.3f}, {r['c2st_ci'][1]:.3f}]"
              f" n={r['c2st_n_test']}")
    for k, q in quality.items():
        print(f"mean NIQE / BRISQUE of {k:5s}: {q['niqe']:.3f} / {q['brisque']:.2f}")
    if args.json:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                  "quality": quality}
        write_bytes_atomic(args.json, json.dumps(report, indent=2).encode())


if __name__ == "__main__":
    main()
