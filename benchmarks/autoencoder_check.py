"""Compare autoencoders on the faces their training held out (never the test split).

An autoencoder leg holds out the first ``val_count`` (64) train-split faces. This script passes
them through each autoencoder (``decode(encode(x))``) and reports what a latent prior's outputs
inherit from its decoder: PSNR and SSIM, the error of the low band alone (8x average-pooled:
colour and tone), the per-image mean colour bias per channel (a cast, in 8-bit levels), and
NIQE (texture; the originals' NIQE is the first row). So a decoder leg ships on held-in faces:

    python benchmarks/autoencoder_check.py weights/autoencoder-128 \\
        out/autoencoder-128-dec3/autoencoder --out out/autoencoder-check
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flipnet.io import to_tensor, to_uint8, write_bytes_atomic
from flipnet.metrics.niqe import niqe
from flipnet.metrics.psnr_ssim import psnr, ssim
from flipnet.models.autoencoder import load_autoencoder
from flipnet.pipelines.evaluate import for_no_reference
from flipnet.training.pairs import load_faces


def scores(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Reconstruction scores of uint8 (N, S, S, 3) faces against the originals."""
    p, r = to_tensor(pred), to_tensor(ref)
    bias = (p - r).mean((2, 3)) * 127.5  # (N, 3) per-image mean error in 8-bit levels
    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(pred, ref)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(pred, ref)])),
            "lowband_rmse": float((F.avg_pool2d(p, 8) - F.avg_pool2d(r, 8)).pow(2).mean().sqrt()
                                  * 127.5),
            "cast_rgb": [round(float(v), 2) for v in bias.pow(2).mean(0).sqrt()],
            "niqe": mean_niqe(pred)}


def mean_niqe(images) -> float:
    """NIQE as the bench measures it (``for_no_reference``: small faces brought to NIQE's size)."""
    return float(np.mean(niqe([for_no_reference(a) for a in images])))


def main() -> None:
    """Score every autoencoder folder on the held-in faces; write JSON and a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("autoencoders", nargs="+", help="autoencoder folders")
    ap.add_argument("--utkface", default="out/prepared/utkface-128")
    ap.add_argument("--val-count", type=int, default=64, help="the training config's val_count")
    ap.add_argument("--out", default="out/autoencoder-check")
    args = ap.parse_args()
    _, faces = load_faces(args.utkface, 128, split="train", limit=args.val_count, progress=False)
    rows = [{"autoencoder": "originals", "niqe": mean_niqe(faces)}]
    for folder in args.autoencoders:
        model, _ = load_autoencoder(folder)
        with torch.no_grad():
            recon = to_uint8(torch.cat([model.decode(model.encode(to_tensor(faces[i:i + 16])))
                                        for i in range(0, len(faces), 16)]))
        rows.append({"autoencoder": folder, **scores(recon, faces)})
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "autoencoder_check.json", json.dumps(rows, indent=1).encode())
    lines = ["| autoencoder | PSNR | SSIM | low-band RMSE (8-bit) | colour cast R/G/B (8-bit) | "
             "NIQE |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "psnr" not in r:
            lines.append(f"| {r['autoencoder']} | - | - | - | - | {r['niqe']:.3f} |")
            continue
        lines.append(f"| {r['autoencoder']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['lowband_rmse']:.2f} | {' / '.join(map(str, r['cast_rgb']))} | "
                     f"{r['niqe']:.3f} |")
    write_bytes_atomic(out / "autoencoder_check.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
