"""Sample quality and speed of a prior, per sampler and step count (issue #4's table).

For each (sampler, steps) it draws ``--n`` faces and compares them with ``--n`` real held-out faces
(the UTKFace test split of ``--real``, resized to the prior's size):

- Frechet distance and KID on dlib 128-D identity descriptors (face-likeness and diversity);
- Frechet distance and KID on low-level natural-scene statistics (``flipnet.metrics.mscn``);
- FID on pytorch-fid's InceptionV3 when ``--fid-inception PATH`` is given;
- mean NIQE of samples and of the real faces (both upscaled by the same rule as ``flipnet eval``);
- sampling speed in images per second on this machine.

Writes JSON, a markdown table and a PNG grid per setting under ``--out``. A setting is
``sampler:steps`` or ``sampler:steps:n`` (its own sample count, compared with the first n real
faces). Each finished setting is kept under ``--out/rows``, so a rerun continues where a killed
one stopped.

    python benchmarks/prior_samples.py --weights weights/prior-64 --n 1000 \
        --settings ddim:10,ddim:25,ddim:50,dpmpp_2m:10,dpmpp_2m:25,ddpm:250

Several priors (issue 18's equal-budget comparison): ``--weights NAME=PATH,NAME=PATH`` and
``--size 128`` score every prior's samples at one pixel size (bicubic up-sampling of smaller
priors' faces; the real faces are read at that size), and ``--grid FILE`` writes their first
samples side by side, one row block per prior (no real faces: the dataset's images stay out
of figures).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flipnet.metrics.frechet import frechet_distance, kernel_inception_distance
from flipnet.metrics.mscn import lowlevel_features
from flipnet.metrics.niqe import niqe
from flipnet.models.prior import load_prior
from flipnet.pipelines.evaluate import for_no_reference, identity_features
from flipnet.pipelines.sample import sample_prior
from flipnet.training.data import FaceFolder
from flipnet.viz import make_grid, save_grid


def feature_sets(images: np.ndarray, fid_net) -> dict[str, np.ndarray]:
    """Identity, low-level (and Inception) features of uint8 (N, H, W, 3) faces."""
    feats = {"identity": identity_features(images), "lowlevel": lowlevel_features(images)}
    if fid_net is not None:
        from flipnet.metrics.inception import inception_features

        feats["inception"] = inception_features(fid_net, images)
    return feats


def compare(fake: dict, real: dict, seed: int) -> dict:
    """FD and KID between two feature dictionaries, per feature kind."""
    out = {}
    for kind, feats in fake.items():
        rng = np.random.default_rng(seed)
        subset = min(len(feats), len(real[kind]), 1000)
        out[f"fd_{kind}"] = frechet_distance(feats, real[kind])
        out[f"kid_{kind}"] = kernel_inception_distance(feats, real[kind], generator=rng,
                                                       subset_size=subset).mean
    return out


def mean_niqe(images: np.ndarray) -> float:
    """Mean NIQE over faces scored as ``flipnet eval`` scores crops (small ones upscaled)."""
    return float(np.mean([niqe(for_no_reference(im)) for im in images]))


def at_size(faces: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, s, s, 3) faces resized to (N, size, size, 3) (bicubic up, area down)."""
    if size <= 0 or faces.shape[1] == size:
        return faces
    interp = cv2.INTER_CUBIC if size > faces.shape[1] else cv2.INTER_AREA
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in faces])


def parse_weights(text: str) -> list[tuple[str, str]]:
    """``NAME=PATH,PATH,...`` -> [(name, path)]; a bare path is named by its folder."""
    out = []
    for item in text.split(","):
        name, _, path = item.rpartition("=")
        out.append((name or Path(path).name, path))
    return out


def score_prior(name: str, path: str, args, real_faces: np.ndarray, real: dict, fid_net,
                out: Path) -> tuple[list[dict], np.ndarray]:
    """Rows of every setting for one prior, and its first samples (for the side-by-side grid)."""
    prior = load_prior(path, args.device)
    rows, first = [], None
    for setting in args.settings.split(","):
        sampler, steps, *rest = setting.split(":")
        n = int(rest[0]) if rest else args.n
        done = out / "rows" / f"{name}-{sampler}-{steps}-n{n}.json"
        faces_file = done.with_suffix(".npy")
        if done.is_file() and faces_file.is_file():  # finished earlier: a rerun continues
            rows.append(json.loads(done.read_text()))
            first = np.load(faces_file) if first is None else first
            continue
        t0 = time.perf_counter()
        fake_faces = sample_prior(prior, n=n, steps=int(steps), sampler=sampler,
                                  seed=args.seed, batch_size=args.batch_size, device=args.device)
        seconds = time.perf_counter() - t0
        fake_faces = at_size(fake_faces, args.size)
        save_grid(out / f"{name}-{sampler}-{steps}.png", list(fake_faces[:64]), ncol=8)
        real_n = {k: v[:n] for k, v in real.items()}
        row = {"prior": name, "setting": f"{sampler} {steps}", "n": n,
               "images_per_s": n / seconds, "load_avg": os.getloadavg()[0],
               "niqe": mean_niqe(fake_faces), **compare(feature_sets(fake_faces, fid_net), real_n,
                                                        args.seed)}
        done.parent.mkdir(exist_ok=True)
        np.save(faces_file, fake_faces[:16])
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, done)
        rows.append(row)
        first = fake_faces[:16] if first is None else first
        print(json.dumps(row), flush=True)
    return rows, first


def main() -> None:
    """Run every setting and write ``bench_prior.json`` / ``bench_prior.md`` under ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="weights/prior-64", help="PATH or NAME=PATH,NAME=PATH")
    ap.add_argument("--real", default="out/prepared/utkface-128")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--settings", default="ddim:10,ddim:25,ddim:50,dpmpp_2m:10,dpmpp_2m:25,"
                                          "dpmpp_2m:50,ddpm:250")
    ap.add_argument("--size", type=int, default=0,
                    help="score at this pixel size (0 = the first prior's own size)")
    ap.add_argument("--grid", default=None, help="PNG of the first 16 samples of each prior")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fid-inception", default=None, help="pytorch-fid InceptionV3 weights file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench-prior")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = parse_weights(args.weights)
    if args.size <= 0:
        args.size = load_prior(weights[0][1], args.device).image_size

    real_faces = FaceFolder(args.real, args.size, split="test").pixels
    real_faces = np.random.default_rng(args.seed).permutation(real_faces)[: args.n]
    fid_net = None
    if args.fid_inception:
        from flipnet.metrics.inception import load_fid_inception

        fid_net = load_fid_inception(args.fid_inception)
    real = feature_sets(real_faces, fid_net)
    rows = [{"prior": "real (held-out UTKFace)", "setting": "", "n": len(real_faces),
             "niqe": mean_niqe(real_faces)}]
    blocks = []
    for name, path in weights:
        prior_rows, first = score_prior(name, path, args, real_faces, real, fid_net, out)
        rows += prior_rows
        blocks.append(make_grid(list(first[:16]), ncol=16))
    if args.grid:
        # samples only: the real faces are dataset images, which figures never reproduce
        save_grid(args.grid, blocks, ncol=1)
    meta = {"weights": args.weights, "size": args.size, "device": args.device,
            "hardware": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "threads": torch.get_num_threads(), "real": args.real, "rows": rows}
    (out / "bench_prior.json").write_text(json.dumps(meta, indent=1))
    keys = ["prior", "setting", "n", "fd_identity", "kid_identity", "fd_lowlevel",
            "kid_lowlevel", "niqe", "images_per_s", "load_avg"] + (
        ["fd_inception"] if fid_net is not None else [])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [r.get(k, "") for k in keys]
        lines.append("| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c)
                                       for c in cells) + " |")
    (out / "bench_prior.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
