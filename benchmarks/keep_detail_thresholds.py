"""Measure the do-no-harm thresholds of ``faces.keep_detail`` on training-split faces.

For held-in train-split crops (never the test split) the restorer's smoothed change map
``d`` (``restoration_weight``'s input) is collected on sharp faces (LQ = HQ) and on faces
degraded with the scaled gfpgan / codeformer presets. ``low`` should sit above what the
restorer changes on sharp faces, ``high`` below what it changes on degraded ones; the script
prints the percentiles it bases them on and the resulting mean paste weight per set.

    python benchmarks/keep_detail_thresholds.py --weights out/restorer-128-v2/restorer --n 200
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from flipnet.degradations.pipeline import degrade_images
from flipnet.degradations.presets import preset_for_size
from flipnet.faces.keep_detail import KeepDetailConfig, change_map, restoration_weight
from flipnet.io import to_tensor, to_uint8
from flipnet.pipelines.methods import RestorerMethod
from flipnet.training.pairs import load_faces
from flipnet.weights import resolve_weights


def main() -> None:
    """Print per-set percentiles of the change map and the weights of the current defaults."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="restorer-128")
    ap.add_argument("--data", default="out/prepared/utkface-128")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, hq = load_faces(args.data, 128, split="train", progress=False)
    hq = hq[np.random.default_rng(args.seed).permutation(len(hq))[:args.n]]
    method = RestorerMethod(resolve_weights(args.weights), device="cpu")
    cfg = KeepDetailConfig()
    sets = {"sharp": hq}
    for preset in ("gfpgan", "codeformer"):
        with torch.no_grad():
            lq = degrade_images(to_tensor(hq), preset_for_size(preset, 128), seed=args.seed)[0]
        sets[preset] = to_uint8(lq)
    out = {}
    for name, lq in sets.items():
        restored = method.restore(lq)
        d = np.stack([change_map(a, b, cfg.sigma) for a, b in zip(lq, restored)])
        w = np.stack([restoration_weight(a, b, cfg) for a, b in zip(lq, restored)])
        out[name] = {"d_p5": float(np.percentile(d, 5) * 255),
                     "d_p50": float(np.percentile(d, 50) * 255),
                     "d_p95": float(np.percentile(d, 95) * 255),
                     "mean_weight": float(w.mean())}
        print(name, json.dumps({k: round(v, 3) for k, v in out[name].items()}), flush=True)
    print(f"\ncurrent thresholds: low {cfg.low * 255:.1f}/255, high {cfg.high * 255:.1f}/255, "
          f"sigma {cfg.sigma}")


if __name__ == "__main__":
    main()
