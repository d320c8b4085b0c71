"""Is a prior good enough to make pseudo targets? (issue #5's gate before fine-tuning)

Unsupervised fine-tuning (Kuai et al., WACV 2025) trains the restorer toward pseudo targets, so
the targets must look more like real HQ faces than the restorer's own outputs while keeping the
person. For ``--n`` unlabeled LQ faces (train split of ``--src``) and each setting
``respaced:t0:tau[:N]`` (N: low-pass factor, default the paper's scaled one) this compares the restorer's outputs R with the pseudo targets P made from
them (``flipnet.diffusion.guided_resample.guided_resample``, restorer detail kept):

- mean NIQE and BRISQUE (lower is better) of R and of P;
- dlib identity cosine between the LQ input and R, and between the LQ input and P;
- low-level Frechet distance of R and of P to ``--n`` real HQ faces (UTKFace test split);
- seconds per pseudo target on this machine.

Fine-tuning can only help when P beats R on the no-reference scores without losing identity.
Writes ``pseudo_target_quality.{json,md}`` and a grid (rows: R, then P per setting).

    python benchmarks/pseudo_target_quality.py --prior weights/prior-64 --n 48 \
        --settings 250:150:90,50:30:18,50:15:0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flipnet.diffusion.guided_resample import GuidedResampleConfig, guided_resample
from flipnet.io import list_images, load_image, to_tensor, to_uint8
from flipnet.metrics.brisque import brisque
from flipnet.metrics.frechet import frechet_distance
from flipnet.metrics.identity import cosine_similarity
from flipnet.metrics.mscn import lowlevel_features
from flipnet.metrics.niqe import niqe
from flipnet.models.prior import load_prior
from flipnet.pipelines.evaluate import for_no_reference, identity_features
from flipnet.pipelines.methods import RestorerMethod
from flipnet.splits import in_split
from flipnet.training.data import FaceFolder
from flipnet.viz import save_grid
from flipnet.weights import resolve_weights


def scores(images: np.ndarray, lq_ids: np.ndarray, real_low: np.ndarray) -> dict:
    """No-reference quality, identity to the LQ input and low-level FD to real HQ faces."""
    ready = [for_no_reference(im) for im in images]
    return {"niqe": float(np.mean([niqe(im) for im in ready])),
            "brisque": float(np.mean(brisque(ready))),
            "id_cos_to_lq": float(np.mean(cosine_similarity(identity_features(images), lq_ids))),
            "fd_lowlevel": frechet_distance(lowlevel_features(images), real_low)}


def main() -> None:
    """Score the restorer's outputs and the pseudo targets of each setting; write JSON/MD/PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restorer", default="restorer-128")
    ap.add_argument("--prior", default="prior-64")
    ap.add_argument("--src", default="out/prepared/lfw-128")
    ap.add_argument("--real", default="out/prepared/utkface-128")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--settings", default="250:150:90,50:30:18,50:15:0")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/pseudo-target-quality")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    files = in_split(list_images(args.src), "train")
    files = [files[i] for i in np.random.default_rng(args.seed).permutation(len(files))[:args.n]]
    lq = np.stack([load_image(f).rgb for f in files])
    restorer = RestorerMethod(resolve_weights(args.restorer), device="cpu")
    prior = load_prior(resolve_weights(args.prior), "cpu")
    restored = restorer.restore(lq)
    real = FaceFolder(args.real, lq.shape[1], split="test").pixels
    real = np.random.default_rng(args.seed).permutation(real)[:args.n]
    real_low, lq_ids = lowlevel_features(real), identity_features(lq)
    rows = [{"images": "input (LQ)", **scores(lq, lq_ids, real_low)},
            {"images": "restorer output R", **scores(restored, lq_ids, real_low)}]
    grid = [restored[:8]]  # the LQ inputs are LFW's own images: not redistributed
    for setting in args.settings.split(","):
        steps, t0, tau, factor = ([int(v) for v in setting.split(":")] + [0])[:4]
        cfg = GuidedResampleConfig(respaced_steps=steps, t0=t0, tau=tau, factor=factor,
                                   seed=args.seed, keep_reference_detail=True)
        start, targets = time.perf_counter(), []
        with torch.no_grad():
            for i in range(0, len(restored), args.batch_size):
                y = to_tensor(restored[i:i + args.batch_size])
                targets.append(to_uint8(guided_resample(prior, y, cfg, first_index=i)))
        seconds = (time.perf_counter() - start) / len(restored)
        targets = np.concatenate(targets)
        grid.append(targets[:8])
        label = f"pseudo target P, {steps} steps, t0 {t0}, tau {tau}"
        row = {"images": label + (f", N {factor}" if factor else ""),
               "setting": {"respaced_steps": steps, "t0": t0, "tau": tau, "factor": factor},
               **scores(targets, lq_ids, real_low), "s_per_target": seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_grid(out / "pseudo_targets.png", [im for r in grid for im in r], ncol=8)
    meta = {"restorer": args.restorer, "prior": args.prior, "src": args.src, "n": len(lq),
            "threads": torch.get_num_threads(), "rows": rows}
    (out / "pseudo_target_quality.json").write_text(json.dumps(meta, indent=1))
    keys = ["images", "niqe", "brisque", "id_cos_to_lq", "fd_lowlevel", "s_per_target"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float)
                                       else str(r.get(k, "")) for k in keys) + " |")
    (out / "pseudo_target_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
