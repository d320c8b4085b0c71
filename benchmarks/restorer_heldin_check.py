"""Compare restorers on the held-in validation faces of the training split (never the test split).

The restorer's training holds out the first ``val_count`` (256) train-split faces in every leg.
This script degrades them like `flipnet bench` (codeformer, gfpgan and the small-face regime,
seed 0) and scores each restorer with the bench's metrics, so the choice of which leg ships is
made on held-in faces and the test split is only reported:

    python benchmarks/restorer_heldin_check.py restorer@weights/restorer-128 \\
        restorer@out/restorer-128-leg4-balanced/restorer --out out/heldin-leg4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flipnet.faces.identity import IdentityEmbedder
from flipnet.io import to_tensor, to_uint8, write_bytes_atomic
from flipnet.pipelines.bench import degrade_set, per_group, score
from flipnet.pipelines.methods import make_method_from_spec
from flipnet.training.pairs import load_faces

SETS = ("codeformer", "gfpgan", "small")


def main() -> None:
    """Score every method on every held-in set; write a JSON and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("methods", nargs="+", help="NAME or NAME@WEIGHTS, as in flipnet bench")
    ap.add_argument("--utkface", default="out/prepared/utkface-128")
    ap.add_argument("--val-count", type=int, default=256, help="the training config's val_count")
    ap.add_argument("--n-ref", type=int, default=200, help="train-split faces after the held-in "
                    "ones, as the FD reference (they were trained on; only a reference)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/heldin-check")
    args = ap.parse_args()
    paths, pixels = load_faces(args.utkface, 128, split="train",
                               limit=args.val_count + args.n_ref, progress=False)
    hq, ref = pixels[:args.val_count], list(pixels[args.val_count:])
    names = [p.stem for p in paths[:args.val_count]]
    emb = IdentityEmbedder(aligned=True)
    methods = {spec: make_method_from_spec(spec) for spec in ["input", *args.methods]}  # load once
    rows = []
    for set_name in SETS:
        with torch.no_grad():
            lq, _ = degrade_set(to_tensor(hq), set_name, args.seed)
        lq = to_uint8(lq)
        for spec, method in methods.items():
            pred = list(method.restore(lq))
            s = score(pred, list(lq), list(hq), ref, emb)
            groups = per_group(s.pop("identity_per_image"), names)
            rows.append({"set": set_name, "method": spec, **s, "groups": groups})
            print(f"{set_name:10s} {spec:55s} PSNR {s['psnr']:.2f} ID {s['identity_deg']:.2f} deg "
                  f"NIQE {s['niqe']:.3f} BRISQUE {s['brisque']:.2f} FD {s['fd_lowlevel']:.3f}",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "heldin.json", json.dumps(rows, indent=1, default=float).encode())
    lines = ["| set | method | PSNR↑ | SSIM↑ | ID angle°↓ | NIQE↓ | BRISQUE↓ | FD-lowlevel↓ |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['identity_deg']:.2f} | {r['niqe']:.3f} | {r['brisque']:.2f} | "
              f"{r['fd_lowlevel']:.3f} |" for r in rows]
    write_bytes_atomic(out / "heldin.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
