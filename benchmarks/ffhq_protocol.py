"""The field's protocol: 512 px FFHQ-aligned faces, restored as users of GFPGAN/CodeFormer do.

Sets (UTKFace test split, never trained on): each raw 200 px chip is detected (dlib, pad 0.25 as
``flipnet prepare`` does), warped onto facexlib's FFHQ 512 template with the border filled by
reflection (UTKFace chips are tighter than FFHQ framing), then degraded at 512 px with the
published ranges (``gfpgan``, ``codeformer``); ``sharp`` is the 512 crop itself (do-no-harm).

Each method restores every image twice, as ``flipnet restore`` would:
  * ``aligned``: ``--aligned`` (FFHQ framing: mapped to the model's template and pasted back);
  * ``photo``: as a whole photo (detect -> align -> restore -> paste); a face the detector
    misses leaves the photo as it is, and counts in the miss rate.
Detection is ``flipnet restore``'s chain: HOG (+ a 2x pass, then shrunk copies, then CNN; see
``faces.detect.detect_all_faces``), then the learned locator (``weights/face-locator`` when
present, ``models.face_locator``), then the restored pass (``pipelines.restore.detect_restored``).
Scores at 512 px: PSNR / SSIM against the ground truth, dlib identity (cosine and angle) and
landmark distance on the model-template crops of both, NIQE, BRISQUE, FD-lowlevel against
the ground-truth set. Detection: miss rate, share found at the right place (eyes within 0.25
inter-eye distances) and seconds per photo of each chain (``detection``).

    python benchmarks/ffhq_protocol.py --n 40 --out out/ffhq-protocol --photo-sets sharp \\
        --methods input,classical,restorer@restorer-128-v1,restorer
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from flipnet.io import list_images, load_image, save_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.splits import in_split

SETS = ("sharp", "gfpgan", "codeformer")


def build_sets(args) -> dict[str, list[np.ndarray]]:
    """{set: [uint8 (512, 512, 3)]} plus "gt"; cached as PNGs under ``OUT/sets``."""
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size
    from flipnet.faces.align import similarity_transform, warp_to_crop
    from flipnet.faces.detect import detect_faces
    from flipnet.faces.template import FFHQ_512

    root = Path(args.out) / "sets"
    manifest = root / "sets.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("args") == [args.n, args.seed]:
        names = json.loads(manifest.read_text())["names"]
        return {s: [load_image(root / s / f"{n}.png").rgb for n in names] for s in
                ("gt", "gfpgan", "codeformer")} | {"names": names}
    files = sorted(in_split(list_images(args.utkface), "test"))
    files = [files[i] for i in np.random.default_rng(args.seed).permutation(len(files))]
    gt, names = [], []
    for p in files:
        rgb = load_image(p).rgb
        faces = detect_faces(rgb, pad=0.25)
        if not faces:
            continue
        affine = similarity_transform(faces[0].landmarks5, FFHQ_512)
        gt.append(warp_to_crop(rgb, affine, 512, border="reflect"))
        names.append(p.name.split(".")[0])
        if len(gt) == args.n:
            break
    sets = {"gt": gt, "names": names}
    for preset in ("gfpgan", "codeformer"):
        with torch.no_grad():
            lq = degrade_images(to_tensor(np.stack(gt)), preset_for_size(preset, 512),
                                seed=args.seed)[0]
        sets[preset] = list(to_uint8(lq))
    for s in ("gt", "gfpgan", "codeformer"):
        for n, im in zip(names, sets[s]):
            save_image(root / s / f"{n}.png", im)
    write_bytes_atomic(manifest, json.dumps({"args": [args.n, args.seed],
                                             "names": names}).encode())
    return sets


CHAINS = {"dlib+restored": ("dlib", "restored"),  # the chain before the locator
          "dlib+locator": ("dlib", "locator"),
          "dlib+locator+restored": ("dlib", "locator", "restored")}  # flipnet restore's chain


def detection(images: list[np.ndarray]) -> dict:
    """Miss rate, right-place rate and seconds per photo of the whole-photo detection chain
    (``pipelines.photo.detect_photo_faces``) on FFHQ-aligned images, and of each chain of
    ``CHAINS`` (its stages timed once per photo: the locator and the restored pass each run on
    every photo dlib misses). *Found*: the chain returns a face; *at the right place*: one face
    has both eye centres within 0.25 true inter-eye distances of the truth (the FFHQ template,
    ``faces.template.FFHQ_512``, scaled to the image). Without locator weights its stage finds
    nothing and ``locator`` is null."""
    from flipnet.faces.detect import detect_all_faces
    from flipnet.faces.template import FFHQ_512
    from flipnet.pipelines.photo import (
        LOCATOR_WEIGHTS,
        detect_located,
        detect_restored,
        locator_folder,
    )

    stages = {"dlib": detect_all_faces, "locator": detect_located, "restored": detect_restored}
    runs = []  # per photo: {stage: (faces, seconds)}
    for im in images:
        run = {}
        for name, fn in stages.items():
            if name != "dlib" and run["dlib"][0]:
                break
            t0 = time.perf_counter()
            run[name] = (fn(im), time.perf_counter() - t0)
        runs.append(run)

    def right_place(faces: list, shape: tuple) -> bool:
        truth = FFHQ_512 * np.array([shape[1] / 512, shape[0] / 512], np.float32)
        tol = 0.25 * float(np.linalg.norm(truth[1] - truth[0]))
        return any(np.linalg.norm(f.landmarks5[:2] - truth[:2], axis=1).max() < tol
                   for f in faces)

    chains = {}
    for chain, names in CHAINS.items():
        found, right, seconds = [], [], 0.0
        for im, run in zip(images, runs):
            faces = []
            for name in names:
                if name in run:
                    faces, sec = run[name]
                    seconds += sec
                    if faces:
                        break
            found.append(bool(faces))
            right.append(right_place(faces, im.shape))
        chains[chain] = {"miss_rate": round(1 - float(np.mean(found)), 4),
                         "found_right_place": round(float(np.mean(right)), 4),
                         "seconds_per_photo": round(seconds / len(images), 3)}
    folder = locator_folder(LOCATOR_WEIGHTS)
    return {**chains["dlib+locator+restored"], "locator": str(folder) if folder else None,
            "chains": chains}


def model_crops(images: list[np.ndarray]) -> list[np.ndarray]:
    """The 128 px flipnet-template crops of FFHQ-framed images (for identity and landmarks)."""
    from flipnet.pipelines.methods import InputMethod
    from flipnet.pipelines.restore import ffhq_aligned_face

    return [ffhq_aligned_face(im, InputMethod()).crop for im in images]


def score(pred: list[np.ndarray], gt: list[np.ndarray], gc: list[np.ndarray], emb) -> dict:
    """Full-reference and no-reference scores of 512 px predictions (``gc``: the ground
    truth's ``model_crops``, made once)."""
    from flipnet.errors import NoFaceError
    from flipnet.metrics.brisque import brisque
    from flipnet.metrics.frechet import frechet_distance_images
    from flipnet.metrics.identity import cosine_similarity
    from flipnet.metrics.landmarks import landmark_distance
    from flipnet.metrics.niqe import niqe
    from flipnet.metrics.psnr_ssim import psnr, ssim

    pc = model_crops(pred)
    ids = []
    for a, b in zip(pc, gc):
        try:
            ids.append(float(cosine_similarity(emb.embed(a), emb.embed(b))[0]))
        except NoFaceError:
            pass
    ids = np.clip(ids, -1, 1)
    return {"psnr": float(np.mean([psnr(p, g) for p, g in zip(pred, gt)])),
            "ssim": float(np.mean([ssim(p, g) for p, g in zip(pred, gt)])),
            "identity_cos": float(np.mean(ids)),
            "identity_deg": float(np.degrees(np.arccos(ids)).mean()),
            "lmd": landmark_distance(pc, gc, aligned=True, skip_no_face=True)["mean"],
            "niqe": float(np.nanmean(niqe(pred))), "brisque": float(np.nanmean(brisque(pred))),
            "fd_lowlevel": frechet_distance_images(pred, gt, "lowlevel", progress=False)}


def main() -> None:
    """Build the sets, restore with each method in both modes, score, write JSON + Markdown."""
    from flipnet.faces.identity import IdentityEmbedder
    from flipnet.pipelines.methods import make_method_from_spec
    from flipnet.pipelines.restore import restore_photo

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utkface", default="../shared/data/utkface")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/ffhq-protocol")
    ap.add_argument("--methods", default="input,classical,restorer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photo-sets", default="sharp,gfpgan,codeformer",
                    help="sets also restored as whole photos (detection + paste)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = build_sets(args)
    gt = sets["gt"]
    gt_crops = model_crops(gt)
    emb = IdentityEmbedder(aligned=True)
    out = Path(args.out)
    results = {"n": len(gt), "seed": args.seed,
               "detection": {s: detection(sets[s] if s != "sharp" else gt) for s in SETS},
               "methods": {}}
    for spec in [m for m in args.methods.split(",") if m]:
        method = make_method_from_spec(spec)
        res = results["methods"][spec] = {}
        for s in SETS:
            lq = gt if s == "sharp" else sets[s]
            for mode in ("aligned", "photo") if s in args.photo_sets else ("aligned",):
                t0 = time.perf_counter()
                pred = [restore_photo(im, method, aligned=mode == "aligned").image for im in lq]
                sec = (time.perf_counter() - t0) / len(lq)
                res[f"{s}/{mode}"] = {**score(pred, gt, gt_crops, emb), "seconds_per_image": sec}
                print(spec, s, mode, json.dumps({k: round(v, 3) for k, v in
                                                  res[f"{s}/{mode}"].items()}), flush=True)
                if mode == "aligned":
                    for n, im in list(zip(sets["names"], pred))[:6]:
                        save_image(out / "pred" / spec / s / f"{n}.png", im)
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=1).encode())
    print(render(results))
    if results["methods"]:
        save_grid(out, sets, [*results["methods"]])


def save_grid(out: Path, sets: dict, methods: list[str], *, faces: int = 6) -> None:
    """Before/after PNG of the codeformer set: the LQ input row, then one row per method
    (``--aligned`` outputs; ground truth left out: data-set images stay out of the docs)."""
    from flipnet.viz import save_grid as grid

    rows = [sets["codeformer"][:faces]]
    for m in methods:
        rows.append([load_image(out / "pred" / m / "codeformer" / f"{n}.png").rgb
                     for n in sets["names"][:faces]])
    small = [cv2.resize(im, (256, 256), interpolation=cv2.INTER_AREA) for row in rows for im in row]
    grid(out / "before_after.png", small, ncol=faces)


def render(results: dict) -> str:
    """Markdown tables: one per set, rows (method, mode)."""
    cols = ["psnr", "ssim", "identity_cos", "identity_deg", "lmd", "niqe", "brisque",
            "fd_lowlevel"]
    lines = ["| set | detection chain | miss rate | found at the right place | s / photo |",
             "|---|---|---|---|---|"]
    for s, d in results["detection"].items():
        for chain, c in d.get("chains", {"": d}).items():
            lines.append(f"| {s} | {chain} | {c['miss_rate']:.3f} | "
                         f"{c.get('found_right_place', float('nan')):.3f} | "
                         f"{c['seconds_per_photo']:.3f} |")
    for s in SETS:
        lines += ["", f"**{s}** ({results['n']} faces, 512 px FFHQ-aligned)", "",
                  "| method | mode | PSNR↑ | SSIM↑ | ID cos↑ | ID angle°↓ | LMD↓ | NIQE↓ | "
                  "BRISQUE↓ | FD-lowlevel↓ |", "|---|---|" + "---|" * len(cols)]
        for m, res in results["methods"].items():
            for mode in ("aligned", "photo"):
                if f"{s}/{mode}" not in res:
                    continue
                r = res[f"{s}/{mode}"]
                lines.append(f"| {m} | {mode} | " + " | ".join(
                    f"{r[c]:.3f}" if abs(r[c]) < 10 else f"{r[c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
