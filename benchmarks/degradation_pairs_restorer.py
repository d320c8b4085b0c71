"""The point of FLIPNET's degradation mode (issue 17): a restorer trained on FLIPNET-degraded pairs
against the same restorer trained on naive pairs, scored on real LQ.

``pairs``: the same ``--n`` train-split UTKFace faces (fixed permutation) become two pair folders
(``lq/`` + ``target/``): ``naive`` (the size-scaled gfpgan, codeformer and difface presets in
turn, image i with seed + i) and ``flipnet`` (FLIPNET's degradation mode, ``--steps`` sampler
steps, seed + i). ``train``: one restorer run per folder from the same start (``--init``, default
the shipped restorer) for the same ``--minutes`` of wall time, with everything else from
``--base-config`` but a constant ``--lr``. ``eval``: both, the start and the input on LFW people I-L (real LQ, held in):
NIQE, BRISQUE, identity cosine to the input, FD-lowlevel to real HQ (``pipelines.bench.score``),
written to ``<out>/rows.json`` and ``rows.md``.

    python benchmarks/degradation_pairs_restorer.py pairs --flipnet weights/flipnet-64 --n 2000
    python benchmarks/degradation_pairs_restorer.py train --minutes 15
    python benchmarks/degradation_pairs_restorer.py eval --n 200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from flipnet.config import load_config
from flipnet.io import list_images, load_image, save_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.splits import in_split

NAIVE = ("gfpgan", "codeformer", "difface")


def make_pairs(args) -> None:
    """The naive and the FLIPNET pair folders of the same HQ faces."""
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size
    from flipnet.pipelines.degrade import DegradeConfig, flipnet_degrade_folder

    files = sorted(in_split(list_images(args.utkface), "train"))
    files = [files[i] for i in np.random.default_rng(args.seed).permutation(len(files))[:args.n]]
    out = Path(args.out)
    hq_dir = out / "hq"
    for i, p in enumerate(files):  # the HQ faces under their own names, the targets of both
        dst = out / "naive" / "lq" / f"{i:05d}.png"
        if dst.is_file():
            continue
        hq = load_image(p).rgb
        for d in (hq_dir, out / "naive" / "target", out / "flipnet" / "target"):
            save_image(d / f"{i:05d}.png", hq)
        cfg = preset_for_size(NAIVE[i % len(NAIVE)], hq.shape[0])
        with torch.no_grad():
            lq = degrade_images(to_tensor(hq[None]), cfg, seed=args.seed + i)[0]
        save_image(dst, to_uint8(lq)[0])  # written last: a face with its LQ is complete
    report = flipnet_degrade_folder(hq_dir, out / "flipnet" / "lq", DegradeConfig(
        seed=args.seed, weights=args.flipnet, steps=args.steps, device="cpu"))
    print(report.summary())
    write_bytes_atomic(out / "pairs.json", json.dumps({
        "n": len(files), "seed": args.seed, "naive": list(NAIVE), "flipnet": args.flipnet,
        "steps": args.steps, "faces": [str(p) for p in files]}, indent=1).encode())


def train(args) -> None:
    """One restorer run per pair folder: same start, same minutes, same settings."""
    from flipnet.training.restorer import RestorerTrainConfig, train_restorer

    base = load_config(RestorerTrainConfig, args.base_config)
    out = Path(args.out)
    for kind in ("naive", "flipnet"):
        cfg = dataclasses.replace(base, pairs_dir=str(out / kind), out_dir=str(out / f"train-{kind}"),
                                  init_from=args.init, max_minutes=args.minutes, resume=False,
                                  lr=args.lr, lr_schedule="constant", warmup_steps=0)
        if (Path(cfg.out_dir) / "restorer" / "config.json").is_file():
            continue
        train_restorer(cfg)


def evaluate(args) -> None:
    """Input, the start and both restorers on LFW people I-L."""
    from flipnet.faces.identity import IdentityEmbedder
    from flipnet.pipelines.bench import score
    from flipnet.pipelines.methods import make_method

    lfw = sorted(in_split(list_images(args.lfw), "test"))
    pick = np.random.default_rng(args.seed).choice(len(lfw), min(args.n, len(lfw)), replace=False)
    lq = [load_image(lfw[i]).rgb for i in sorted(pick)]
    ref_files = sorted(in_split(list_images(args.utkface), "test"))[:args.n]
    ref = [load_image(p).rgb for p in ref_files]
    emb = IdentityEmbedder(aligned=True)
    out = Path(args.out)
    rows = []
    for label, weights in (("input", None), ("start", args.init),
                           ("naive pairs", str(out / "train-naive" / "restorer")),
                           ("FLIPNET pairs", str(out / "train-flipnet" / "restorer"))):
        if weights is not None and not (Path(weights) / "config.json").is_file():
            print(f"{label}: {weights} not trained yet (run the train stage); row skipped")
            continue
        method = make_method("input" if weights is None else "restorer", weights, device="cpu")
        pred = list(method.restore(np.stack(lq)))
        row = {"row": label, "weights": weights, **score(pred, lq, None, ref, emb)}
        row.pop("identity_per_image")
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_bytes_atomic(out / "rows.json", json.dumps(rows, indent=1).encode())
    lines = ["| restorer trained on | identity cos to input | NIQE | BRISQUE | FD-low |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['identity_cos']:.4f} | {r['niqe']:.3f} | {r['brisque']:.2f} | "
              f"{r['fd_lowlevel']:.4f} |" for r in rows]
    write_bytes_atomic(out / "rows.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


def main() -> None:
    """pairs | train | eval."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("pairs", "train", "eval"))
    ap.add_argument("--utkface", default="out/prepared/utkface-128")
    ap.add_argument("--lfw", default="out/prepared/lfw-128")
    ap.add_argument("--flipnet", default="weights/flipnet-64")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=2000, help="pairs: HQ faces; eval: LFW I-L faces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base-config", default="configs/restorer-128-cpu-leg3.json")
    ap.add_argument("--init", default="weights/restorer-128")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--lr", type=float, default=1e-4, help="constant fine-tuning learning rate")
    ap.add_argument("--out", default="out/degradation-pairs")
    args = ap.parse_args()
    {"pairs": make_pairs, "train": train, "eval": evaluate}[args.stage](args)


if __name__ == "__main__":
    main()
