"""Does unsupervised fine-tuning help? (issue #5's two experiments)

Real degradation: fine-tune on LFW people A-H (``flipnet finetune``), test on people I-L: NIQE,
BRISQUE, identity cosine between input and output, low-level Frechet distance to real HQ faces.

Unknown synthetic degradation: UTKFace test-split faces (never seen by the restorer) through the
camera RAW pipeline (``raw`` preset, ISO 3200). ``raw-set`` splits them by a fixed permutation
into an unlabeled fine-tuning half (LQ only), a test set (LQ + ground truth) and the rest, which
serves as the real HQ reference for the Frechet distance. Every method is scored with
``flipnet.pipelines.bench.score``, the same metrics as ``flipnet bench``.

    python benchmarks/finetune_gain.py raw-set --out out/finetune-raw
    flipnet finetune --unlabeled out/finetune-raw/unlabeled --split test --out out/finetune-raw/ft ...
    python benchmarks/finetune_gain.py eval --lfw-finetuned out/finetune-lfw/train/export \\
        --raw-finetuned out/finetune-raw/ft/train/export --out out/finetune-gain
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from flipnet.io import list_images, load_image, save_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.splits import in_split
from flipnet.viz import save_grid


def _utk_test(folder: str, seed: int) -> list[Path]:
    files = sorted(in_split(list_images(folder), "test"))
    return [files[i] for i in np.random.default_rng(seed).permutation(len(files))]


def build_raw_sets(args) -> None:
    """Unlabeled RAW-degraded faces, a RAW test set with ground truth, and the HQ reference."""
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size

    files = _utk_test(args.utkface, args.seed)
    if len(files) < args.n_finetune + args.n_test + 50:
        raise SystemExit(f"{args.utkface}: only {len(files)} test-split faces")
    out = Path(args.out)
    hq = np.stack([load_image(p).rgb for p in files])
    cfg = preset_for_size("raw", hq.shape[1])
    with torch.no_grad():
        lq = to_uint8(degrade_images(to_tensor(hq), cfg, seed=args.seed)[0])
    a, b = args.n_finetune, args.n_finetune + args.n_test
    for i, p in enumerate(files):
        if i < a:
            save_image(out / "unlabeled" / f"{p.stem}.png", lq[i])
        elif i < b:
            save_image(out / "test" / "lq" / f"{p.stem}.png", lq[i])
            save_image(out / "test" / "gt" / f"{p.stem}.png", hq[i])
    write_bytes_atomic(out / "sets.json", json.dumps({
        "preset": "raw (ISO 3200)", "seed": args.seed, "finetune": [p.stem for p in files[:a]],
        "test": [p.stem for p in files[a:b]], "reference": [str(p) for p in files[b:]]},
        indent=1).encode())
    print(f"{a} unlabeled, {b - a} test, {len(files) - b} reference faces under {out}")


def evaluate(args) -> None:
    """Score input / pre-fine-tune / fine-tuned / DifFace-style prior on both test sets."""
    from flipnet.faces.identity import IdentityEmbedder
    from flipnet.pipelines.bench import score
    from flipnet.pipelines.methods import SAMPLING_METHODS, make_method

    raw = Path(args.raw_sets)
    sets_meta = json.loads((raw / "sets.json").read_text())
    ref = [load_image(p).rgb for p in sets_meta["reference"]]
    names = sets_meta["test"][:args.n]
    raw_lq = [load_image(raw / "test" / "lq" / f"{n}.png").rgb for n in names]
    raw_gt = [load_image(raw / "test" / "gt" / f"{n}.png").rgb for n in names]
    lfw = sorted(in_split(list_images(args.lfw), "test"))
    pick = np.random.default_rng(args.seed).choice(len(lfw), min(args.n, len(lfw)), replace=False)
    lfw_lq = [load_image(lfw[i]).rgb for i in sorted(pick)]
    methods = [("input", "input", None), ("restorer (before)", "restorer", args.restorer),
               ("fine-tuned on LFW A-H", "restorer", args.lfw_finetuned),
               ("fine-tuned on RAW half", "restorer", args.raw_finetuned),
               (f"prior, DifFace-style ({args.prior_steps} steps)", "prior", args.prior)]
    emb = IdentityEmbedder(aligned=True)
    rows, grids = [], {"raw": [], "lfw": []}  # rows: methods in table order
    out = Path(args.out)
    for label, kind, weights in methods:
        if kind != "input" and weights is None:
            continue
        sampling = ({"steps": args.prior_steps, "seed": args.seed} if kind in SAMPLING_METHODS
                    else {})
        method = make_method(kind, weights, device="cpu", **sampling)
        for sname, lq, gt in (("raw", raw_lq, raw_gt), ("lfw", lfw_lq, None)):
            slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
            cache = out / "rows" / f"{slug}-{sname}.json"
            if cache.exists():
                row = json.loads(cache.read_text())
            else:
                start = time.perf_counter()
                pred = list(method.restore(np.stack(lq)))
                sec = (time.perf_counter() - start) / len(pred)
                row = {"method": label, "weights": weights, "set": sname,
                       **score(pred, lq, gt, ref, emb), "seconds_per_face": sec}
                row.pop("identity_per_image")
                for i, im in enumerate(pred[:8]):  # kept for the grid of a resumed run
                    save_image(cache.with_suffix("") / f"{i}.png", im)
                write_bytes_atomic(cache, json.dumps(row).encode())
            rows.append(row)
            if not (kind == "input" and sname == "lfw"):  # LFW's own images: not redistributed
                grids[sname].append([load_image(p).rgb
                                     for p in sorted(cache.with_suffix("").glob("*.png"))])
            print(json.dumps(row), flush=True)
    rows += _reference_rows(ref[:args.n])
    for sname, g in grids.items():
        save_grid(out / f"{sname}_before_after.png", [im for r in g for im in r], ncol=8)
    write_bytes_atomic(out / "finetune_gain.json", json.dumps(rows, indent=1).encode())
    md = [_table(rows, "raw", ["psnr", "ssim", "identity_cos", "niqe", "brisque", "fd_lowlevel"]),
          _table(rows, "lfw", ["identity_cos", "niqe", "brisque", "fd_lowlevel"])]
    write_bytes_atomic(out / "finetune_gain.md", "\n\n".join(md).encode())
    print("\n\n".join(md))


def _reference_rows(ref: list[np.ndarray]) -> list[dict]:
    """NIQE and BRISQUE of real HQ faces: what 'natural' scores are on these crops."""
    from flipnet.metrics.brisque import brisque
    from flipnet.metrics.niqe import niqe
    from flipnet.pipelines.evaluate import _mean, for_no_reference

    nr = [for_no_reference(im) for im in ref]
    scores = {"method": f"real HQ faces (UTKFace reference, n={len(ref)})",
              "niqe": _mean(niqe(nr)), "brisque": _mean(brisque(nr))}
    return [{**scores, "set": "raw"}, {**scores, "set": "lfw"}]


def _table(rows: list[dict], sname: str, keys: list[str]) -> str:
    def cell(r, k):
        return f"{r[k]:.4g}" if isinstance(r.get(k), float) else ""

    lines = ["| method | " + " | ".join(keys) + " | s/face |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        if r["set"] == sname:
            lines.append(f"| {r['method']} | " + " | ".join(cell(r, k) for k in keys)
                         + f" | {cell(r, 'seconds_per_face')} |")
    return "\n".join(lines)


def main() -> None:
    """``raw-set`` builds the RAW experiment's sets; ``eval`` scores every method."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["raw-set", "eval"])
    ap.add_argument("--utkface", default="out/prepared/utkface-128")
    ap.add_argument("--lfw", default="out/prepared/lfw-128")
    ap.add_argument("--out", default="out/finetune-raw")
    ap.add_argument("--raw-sets", default="out/finetune-raw")
    ap.add_argument("--n-finetune", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--n", type=int, default=200, help="test faces per set in eval")
    ap.add_argument("--restorer", default="restorer-128")
    ap.add_argument("--lfw-finetuned", default=None)
    ap.add_argument("--raw-finetuned", default=None)
    ap.add_argument("--prior", default="prior-64")
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build_raw_sets(args) if args.what == "raw-set" else evaluate(args)


if __name__ == "__main__":
    main()
