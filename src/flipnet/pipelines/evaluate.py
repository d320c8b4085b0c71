"""``flipnet eval``: score a folder of restored faces the way the BFR literature does.

* no-reference, on ``--pred`` alone: NIQE, BRISQUE;
* full-reference, with ``--gt`` (files paired by relative path, extension ignored): PSNR and SSIM
  on RGB and on Y, identity similarity (dlib cosine / degrees), landmark distance (LMD), LPIPS
  when the user gives backbone weights;
* distribution, with ``--ref`` (a folder of real HQ faces): Frechet distance and KID on low-level
  natural-scene statistics and on dlib identity features, FID when Inception weights are given.
Metrics that cannot run (missing weights) are reported as ``"unavailable"``, never guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flipnet.errors import FlipnetError
from flipnet.io import BatchLog, list_images, load_image, write_bytes_atomic


@dataclass(frozen=True)
class EvalConfig:
    """What ``flipnet eval`` measures."""

    pred: str = field(default="", metadata={"help": "Folder of restored (predicted) faces."})
    gt: str = field(default="", metadata={"help": "Folder of ground-truth faces (full-reference)."})
    ref: str = field(default="", metadata={"help": "Folder of real HQ faces (distribution metrics)."})
    out: str = field(default="eval.json", metadata={"help": "JSON file for the results."})
    aligned: bool = field(default=True, metadata={"help": "Inputs are aligned face crops."})
    identity: bool = field(default=True, metadata={"help": "Identity similarity and LMD (dlib)."})
    lpips_net: str = field(default="alex", metadata={"help": "LPIPS backbone: alex or vgg."})
    lpips_backbone: str = field(default="", metadata={
        "help": "torchvision-layout backbone weights for LPIPS (else LPIPS is unavailable)."})
    fid_inception: str = field(default="", metadata={
        "help": "pt_inception-2015-12-05 weights for FID (else FID is unavailable)."})
    limit: int = field(default=0, metadata={"help": "Use at most this many images (0 = all)."})
    seed: int = field(default=0, metadata={"help": "Seed for KID subsets."})


def _key(root: Path, path: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def read_folder(folder: str, *, limit: int = 0, log: BatchLog | None = None) -> dict[str, np.ndarray]:
    """Decode every image of a folder into ``{relative name without extension: uint8 RGB}``."""
    root = Path(folder)
    paths = list_images(root)
    if limit:
        paths = paths[:limit]
    out = {}
    for p in paths:
        try:
            out[_key(root, p) if root.is_dir() else p.stem] = load_image(p).rgb
        except FlipnetError as e:
            (log or BatchLog()).skip(p, str(e))
    if not out:
        raise FlipnetError(f"{folder}: no readable images")
    return out


NR_MIN_SIDE = 192  # NIQE needs at least two 96-px blocks


def for_no_reference(rgb: np.ndarray) -> np.ndarray:
    """Crops under 192 px are bicubic-upscaled x2 (128 -> 256) before NIQE / BRISQUE, since
    NIQE's 96-px blocks do not fit twice in a 128-px face. Every method is scored the same way."""
    import cv2

    h, w = rgb.shape[:2]
    if min(h, w) >= NR_MIN_SIDE:
        return rgb
    f = int(np.ceil(NR_MIN_SIDE / min(h, w)))
    return cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_CUBIC)


def _mean(values) -> float:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def evaluate_folders(cfg: EvalConfig, *, progress: bool = True) -> dict:
    """Compute every metric the given folders allow; returns a JSON-ready dict."""
    from flipnet.metrics.brisque import brisque
    from flipnet.metrics.niqe import niqe

    log = BatchLog()
    pred = read_folder(cfg.pred, limit=cfg.limit, log=log)
    names = sorted(pred)
    result: dict = {"pred": cfg.pred, "count": len(names), "metrics": {}}
    m = result["metrics"]
    nr_images = [for_no_reference(pred[n]) for n in names]
    m["niqe"] = _mean(niqe(nr_images))
    m["brisque"] = _mean(brisque(nr_images))

    if cfg.gt:
        m.update(_full_reference(cfg, pred, read_folder(cfg.gt, log=log), result, progress))
    if cfg.ref:
        m.update(_distribution(cfg, [pred[n] for n in names],
                               list(read_folder(cfg.ref, limit=cfg.limit, log=log).values()),
                               progress))
    result["skipped_files"] = log.skipped
    if cfg.out:
        write_bytes_atomic(cfg.out, json.dumps(result, indent=1).encode())
    return result


def _full_reference(cfg: EvalConfig, pred: dict, gt: dict, result: dict, progress: bool) -> dict:
    from flipnet.metrics.psnr_ssim import psnr, ssim

    pairs = [n for n in sorted(pred) if n in gt]
    missing = sorted(set(pred) - set(gt))
    if not pairs:
        raise FlipnetError(f"{cfg.gt}: no ground-truth file matches a prediction by name")
    bad = [n for n in pairs if pred[n].shape != gt[n].shape]
    if bad:
        n = bad[0]
        raise FlipnetError(f"{cfg.pred}/{n}: size {pred[n].shape[:2]} differs from its "
                           f"ground truth {gt[n].shape[:2]}")
    result["pairs"] = len(pairs)
    result["unpaired"] = missing
    p, g = [pred[n] for n in pairs], [gt[n] for n in pairs]
    out = {"psnr": _mean([psnr(a, b) for a, b in zip(p, g)]),
           "ssim": _mean([ssim(a, b) for a, b in zip(p, g)]),
           "psnr_y": _mean([psnr(a, b, y_channel=True) for a, b in zip(p, g)]),
           "ssim_y": _mean([ssim(a, b, y_channel=True) for a, b in zip(p, g)])}
    if cfg.identity:
        from flipnet.metrics.identity import identity_similarity
        from flipnet.metrics.landmarks import landmark_distance

        ident = identity_similarity(p, g, aligned=cfg.aligned, skip_no_face=True,
                                    progress=progress)
        out["identity_cos"] = ident["mean_cos"]
        out["identity_deg"] = ident["mean_deg"]
        out["lmd"] = landmark_distance(p, g, aligned=cfg.aligned, skip_no_face=True)["mean"]
    out["lpips"] = _lpips(cfg, p, g)
    return out


def _lpips(cfg: EvalConfig, p, g):
    if not cfg.lpips_backbone:
        return "unavailable"
    from flipnet.metrics.lpips import load_lpips, lpips_distances

    return _mean(lpips_distances(load_lpips(cfg.lpips_net, cfg.lpips_backbone), p, g))


def identity_features(images) -> np.ndarray:
    """dlib 128-D identity descriptors of aligned crops as a Frechet/KID feature extractor."""
    from flipnet.faces.identity import IdentityEmbedder

    emb = IdentityEmbedder(aligned=True)
    return np.asarray(emb.embed_batch(list(images)), np.float64)


def _distribution(cfg: EvalConfig, pred: list, ref: list, progress: bool) -> dict:
    from flipnet.metrics.frechet import frechet_distance_images, kid_images

    rng = np.random.default_rng(cfg.seed)
    subset = max(2, min(len(pred), len(ref), 1000))
    out = {"fd_lowlevel": frechet_distance_images(pred, ref, "lowlevel", progress=progress),
           "kid_lowlevel": kid_images(pred, ref, "lowlevel", generator=rng, subset_size=subset,
                                      progress=progress).mean}
    if cfg.identity and min(len(pred), len(ref)) > 2:
        out["fd_identity"] = frechet_distance_images(pred, ref, identity_features,
                                                     progress=progress)
    if cfg.fid_inception:
        from flipnet.metrics.inception import inception_features, load_fid_inception

        net = load_fid_inception(cfg.fid_inception)
        out["fid"] = frechet_distance_images(pred, ref, lambda x: inception_features(net, x),
                                             progress=progress)
    else:
        out["fid"] = "unavailable"
    return out


def format_value(v) -> str:
    """Numbers with 4 significant digits; strings (e.g. 'unavailable') as they are."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}"
