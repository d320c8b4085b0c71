"""How much do synthesized LQ faces look like real LQ faces? (issue #6's realism table)

HQ faces (UTKFace test split) are turned into LQ faces by each naive-pipeline preset (blur
rescaled to the face size) and, with ``--flipnet WEIGHTS``, by FLIPNET's degradation mode. Each
synthetic set is compared with real LQ faces (LFW people I-L, never used in training): low-level
Frechet distance and KID on MSCN statistics, and the classifier two-sample test accuracy (50% =
indistinguishable). The undegraded HQ faces are a reference row. Lower is closer to real LQ.
FD-chroma is the Frechet distance of colour statistics (``flipnet.metrics.chroma``: global and
local Cb/Cr), which FD-lowlevel, KID and the critic on luminance statistics do not see: colour
blotches and hue shifts. A last column checks that each synthetic LQ face still shows its person
(dlib identity cosine to the HQ face it was made from).

    python benchmarks/degradation_realism.py --n 300 [--flipnet weights/flipnet-64]

``--flipnet`` may be given several times (one row each, named by the folder, or by its parent
for a training run's ``<out_dir>/flipnet``). ``--autoencoder AE`` (repeatable) adds the ceiling
of any latent degradation mode decoded by AE: real LQ of other people (LFW's train split)
passed through AE, beside the same faces as they are (the floor); their identity column is the
cosine to the face each came from.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from realism_check import compare, degrade_set  # sibling benchmark script
from tqdm import tqdm

from flipnet.io import write_bytes_atomic
from flipnet.metrics.chroma import chroma_features
from flipnet.metrics.frechet import frechet_distance
from flipnet.metrics.identity import cosine_similarity
from flipnet.metrics.mscn import lowlevel_features
from flipnet.pipelines.evaluate import identity_features
from flipnet.training.data import FaceFolder
from flipnet.viz import save_grid

PRESETS = ("gfpgan", "codeformer", "difface", "raw")


def flipnet_set(weights: str, hq: np.ndarray, seed: int, steps: int,
                start: float | None = None, batch_size: int = 16,
                color_fix: int | None = None) -> np.ndarray:
    """HQ -> LQ with FLIPNET's degradation mode, face i seeded with seed + i; ``start`` < 1
    starts from the HQ diffused to that fraction (None: the folder's own start); ``color_fix``
    N takes the pixel low band (factor N) from the HQ face (None: off in degradation mode)."""
    from flipnet.diffusion.flipnet_sampling import flipnet_degrade
    from flipnet.io import to_tensor, to_uint8
    from flipnet.models.flipnet import load_flipnet
    from flipnet.weights import resolve_weights

    net, out = load_flipnet(resolve_weights(weights), device="cpu"), []
    with torch.no_grad():
        for i in tqdm(range(0, len(hq), batch_size), desc="flipnet degrade"):
            x = to_tensor(hq[i:i + batch_size])
            y = flipnet_degrade(net, x, steps=steps, seed=seed, start=start,
                                indices=list(range(i, i + len(x))), color_fix=color_fix)
            out.append(to_uint8(y))  # already back at the input size
    return np.concatenate(out)


def autoencoder_set(folder: str, images: np.ndarray) -> np.ndarray:
    """``images`` (uint8) through an autoencoder folder or a latent prior folder's autoencoder:
    decode(encode(x)), what a latent degradation mode's best output can look like."""
    from flipnet.models.autoencoder import load_autoencoder
    from flipnet.training.autoencoder import reconstruct

    root = Path(folder)
    model, _ = load_autoencoder(root / "autoencoder" if (root / "autoencoder").is_dir() else root)
    return reconstruct(model, images)


def flipnet_label(weights: str) -> str:
    """A row name for a FLIPNET folder: its name, or its run's name for ``<out_dir>/flipnet``."""
    path = Path(weights)
    return path.parent.name if path.name == "flipnet" and path.parent.name else path.name


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def main() -> None:
    """Build every synthetic set, compare each with real LQ, write JSON / markdown / a grid."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hq", default="out/prepared/utkface-128")
    ap.add_argument("--real-lq", default="out/prepared/lfw-128")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--flipnet", action="append", default=[],
                    help="FLIPNET weights folder (degradation mode); repeatable")
    ap.add_argument("--flipnet-steps", type=int, default=50)
    ap.add_argument("--flipnet-start", type=float, default=None,
                    help="sampling start (< 1: from the HQ diffused that far); default: the "
                    "folder's own")
    ap.add_argument("--flipnet-color-fix", type=int, default=None,
                    help="degradation mode with the HQ's pixel low band (factor N) put back")
    ap.add_argument("--autoencoder", action="append", default=[],
                    help="autoencoder (or latent prior) folder: a ceiling row of real LQ of "
                    "other people through it; repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/degradation-realism")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)

    rng = np.random.default_rng(args.seed)
    hq = rng.permutation(FaceFolder(args.hq, 128, split="test").pixels)[:args.n]
    real = rng.permutation(FaceFolder(args.real_lq, 128, split="test").pixels)[:args.n]
    sets = {"HQ, not degraded": hq}
    for preset in args.presets.split(","):
        sets[f"naive `{preset}`"] = degrade_set(hq, preset, args.seed)
    for weights in args.flipnet:  # the slow sets are kept, keyed by what made them, for reruns
        name = flipnet_label(weights)
        start = "" if args.flipnet_start is None else f"-start{args.flipnet_start:g}"
        if args.flipnet_color_fix is not None:
            start += f"-colorfix{args.flipnet_color_fix}"
        key = f"{name}-steps{args.flipnet_steps}{start}-seed{args.seed}-n{len(hq)}"
        cache = out / f"flipnet-{key}.npy"
        if not cache.exists():
            write_bytes_atomic(cache, _npy_bytes(flipnet_set(weights, hq, args.seed,
                                                             args.flipnet_steps,
                                                             args.flipnet_start,
                                                             color_fix=args.flipnet_color_fix)))
        sets[f"FLIPNET degradation mode ({name}{start.replace('-', ', ')})"] = np.load(cache)
    from_other = []  # sets made from real LQ of other people: identity is to those faces
    if args.autoencoder:
        other = rng.permutation(FaceFolder(args.real_lq, 128, split="train").pixels)[:args.n]
        from_other.append("real LQ, other people (LFW train split), as they are")
        sets[from_other[-1]] = other
        for folder in args.autoencoder:
            from_other.append(f"real LQ, other people, through the autoencoder of `{folder}`")
            sets[from_other[-1]] = autoencoder_set(folder, other)
    real_feats, hq_ids = lowlevel_features(real), identity_features(hq)
    real_chroma = chroma_features(real)
    other_ids = identity_features(other) if from_other else None
    rows = []
    for name, images in sets.items():
        row = compare(name, real, images, real_feats, lowlevel_features(images), args.seed)
        row["chroma_fd"] = frechet_distance(real_chroma, chroma_features(images))
        # a degradation should keep the person: dlib identity cosine to the face it came from
        source_ids = other_ids if name in from_other else hq_ids
        row["id_cos_to_hq"] = float(np.mean(cosine_similarity(identity_features(images),
                                                              source_ids)))
        rows.append(row)
        print(json.dumps(row), flush=True)
    # one row per degraded set in table order; the data sets' own images are not redistributed
    shown = [name for name in sets if name != "HQ, not degraded" and name not in from_other[:1]]
    save_grid(out / "examples.png", [im for name in shown for im in sets[name][:8]], ncol=8)
    write_bytes_atomic(out / "degradation_realism.json",
                       json.dumps({"args": vars(args), "rows": rows}, indent=1).encode())
    lines = ["| LQ set vs real LQ (LFW I-L) | FD-lowlevel | KID | two-sample accuracy [95% CI] "
             "| FD-chroma | ID cos to its HQ face |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['lowlevel_fd']:.4f} | {r['kid_mean']:.4f} ± "
                     f"{r['kid_std']:.4f} | {r['c2st_accuracy']:.3f} [{r['c2st_ci'][0]:.3f}, "
                     f"{r['c2st_ci'][1]:.3f}] | {r['chroma_fd']:.2f} | {r['id_cos_to_hq']:.3f} |")
    write_bytes_atomic(out / "degradation_realism.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
