"""Before/after grid with a ground-truth column, from a public-domain photo (no data-set image).

Usage:
    python benchmarks/before_after_grid.py --methods classical,restorer@restorer-128-v1,restorer \
        --out docs/figures/restorer-before-after.png

The face of scikit-image's astronaut photo (public domain) is aligned to the model's 128 px
template, degraded with each preset scaled to the face size (seeds 0..n-1) and in the small-face
regime (16-64 px in the photo), and restored by each method. Columns: input | METHODS... | ground
truth; one row per (preset, seed). Printed below it: the PSNR of each cell against the ground truth.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from flipnet.degradations.face_size import degrade_at_face_size
from flipnet.degradations.pipeline import degrade_seeded
from flipnet.degradations.presets import preset_for_size
from flipnet.faces.align import align_face
from flipnet.faces.detect import detect_faces
from flipnet.io import to_tensor, to_uint8
from flipnet.metrics.psnr_ssim import psnr
from flipnet.pipelines.methods import make_method_from_spec
from flipnet.viz import save_grid

SMALL_FACE_PX = (16, 24, 32, 48, 64)


def astronaut_face(size: int) -> np.ndarray:
    """The astronaut's face aligned to flipnet's template, uint8 (size, size, 3)."""
    from skimage.data import astronaut

    rgb = astronaut()
    face = detect_faces(rgb)[0]
    return align_face(rgb, face.landmarks5, size=size).crop


def degraded_rows(hq: np.ndarray, presets: list[str], n: int) -> list[tuple[str, np.ndarray]]:
    """(label, LQ uint8) for each preset and seed; ``small`` renders the face at 16-64 px."""
    x = to_tensor(hq[None])
    rows = []
    for preset in presets:
        for seed in range(n):
            if preset == "small":
                px = SMALL_FACE_PX[seed % len(SMALL_FACE_PX)]
                lq, _ = degrade_at_face_size(x, "gfpgan", px, seed)
                label = f"gfpgan at {px} px, seed {seed}"
            else:
                lq, _ = degrade_seeded(x, preset_for_size(preset, hq.shape[0]), [seed])
                label = f"{preset}, seed {seed}"
            rows.append((label, to_uint8(lq)[0]))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Write the grid PNG and print each cell's PSNR against the ground truth."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="classical,restorer@restorer-128-v1,restorer")
    parser.add_argument("--presets", default="gfpgan,codeformer,small")
    parser.add_argument("--n", type=int, default=2, help="seeds per preset")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", default="docs/figures/restorer-before-after.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    hq = astronaut_face(args.size)
    rows = degraded_rows(hq, args.presets.split(","), args.n)
    specs = args.methods.split(",")
    lq = np.stack([r[1] for r in rows])
    outputs = [make_method_from_spec(s).restore(lq) for s in specs]
    cells, table = [], []
    for i, (label, lq_i) in enumerate(rows):
        row = [lq_i, *(out[i] for out in outputs), hq]
        cells.extend(row)
        table.append([label, *(f"{psnr(c, hq):.2f}" for c in row[:-1])])
    path = save_grid(args.out, np.stack(cells), ncol=len(specs) + 2)
    print(f"columns: input | {' | '.join(specs)} | ground truth -> {path}")
    print("| row | input | " + " | ".join(specs) + " |")
    print("|---" * (len(specs) + 2) + "|")
    for t in table:
        print("| " + " | ".join(t) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
