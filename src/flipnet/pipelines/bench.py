"""``flipnet bench``: build the standard test sets, run every available method, write the tables.

Sets (fixed seeds, faces never used in training; see ``flipnet.splits``):
  * synthetic: UTKFace test split (aligned 128 px) x presets ``gfpgan``, ``codeformer``, ``raw``
    (scaled to the face size, ``degradations.presets.preset_for_size``), and ``small``: the
    gfpgan preset on faces of 16-64 px in the photo (``degradations.face_size``), brought to 128;
  * real: LFW people I-L (aligned 128 px), no ground truth.
Methods: every one whose weights are present (``flipnet.pipelines.methods``); ``NAME@WEIGHTS``
runs method NAME on another weights folder (e.g. ``restorer@restorer-128-v1``).
Outputs: ``docs/BENCHMARKS.md`` (the block between the bench markers), ``docs/bench/results.json``
and PNG plots (metric bars, quality vs speed, a before/after grid). Each finished (method, set)
result is kept under ``WORK/done/`` with the settings and a fingerprint of the method's weights, so
a rerun after ``kill -9`` continues with what is left (and redoes anything whose weights changed).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from flipnet.io import (
    list_images,
    load_image,
    remove_partial_files,
    save_image,
    write_bytes_atomic,
)
from flipnet.splits import age_band, in_split, utkface_labels

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
PRESETS = ("gfpgan", "codeformer", "raw", "small")
SMALL_FACES = (16, 64)  # face sizes (px, log-uniform by seed) of the small-face set


@dataclass(frozen=True)
class BenchConfig:
    """What ``flipnet bench`` builds and measures."""

    utkface: str = field(default="out/prepared/utkface-128", metadata={
        "help": "Aligned UTKFace crops (flipnet prepare output); its test split is used."})
    lfw: str = field(default="out/prepared/lfw-128", metadata={
        "help": "Aligned LFW crops; people I-L are the real test set."})
    work: str = field(default="out/bench", metadata={"help": "Folder for sets and predictions."})
    docs: str = field(default="docs", metadata={"help": "Where BENCHMARKS.md and plots go."})
    n: int = field(default=60, metadata={"help": "Faces per set (reduced default)."})
    n_ref: int = field(default=200, metadata={"help": "Real HQ faces for distribution metrics."})
    full: bool = field(default=False, metadata={"help": "Use every test face (n=1000, n_ref=all)."})
    methods: str = field(default="", metadata={"help": "Comma list (default: all available)."})
    seed: int = field(default=0, metadata={"help": "Seed of the degradations."})
    speed: bool = field(default=True, metadata={"help": "Measure faces/s at batch 1 and 32."})
    prior_steps: int = field(default=25, metadata={
        "help": "Respaced steps of the prior method (DifFace-style); t0 = 0.6 of them."})


def degrade_set(hq, preset: str, seed: int):
    """LQ of a bench set: the preset scaled to the face size, or for ``small`` the gfpgan
    preset at a face size drawn per image (seed + i) from ``SMALL_FACES``."""
    import torch

    from flipnet.degradations.face_size import degrade_at_face_size
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size

    if preset != "small":
        return degrade_images(hq, preset_for_size(preset, hq.shape[-1]), seed=seed)
    lo, hi = SMALL_FACES
    out, params = [], []
    for i, x in enumerate(hq.split(1)):
        u = float(np.random.default_rng(seed + i).random())
        lq, p = degrade_at_face_size(x, "gfpgan", round(lo * (hi / lo) ** u), seed + i)
        out.append(lq)
        params.append(p)
    return torch.cat(out), params


def build_sets(cfg: BenchConfig) -> dict[str, dict]:
    """Make (or reuse) the test sets: ``{name: {"lq": dir, "gt": dir|None, "names": [...]}}``."""
    import torch

    from flipnet.io import to_tensor, to_uint8

    n = 1000 if cfg.full else cfg.n
    work = Path(cfg.work) / "sets"
    utk = in_split(list_images(cfg.utkface), "test")
    if len(utk) < n + 10:
        raise FileNotFoundError(f"{cfg.utkface}: only {len(utk)} test-split faces")
    order = np.random.default_rng(cfg.seed).permutation(len(utk))
    utk = [utk[i] for i in order]
    gt_paths = sorted(utk[:n])
    ref_paths = sorted(utk[n:] if cfg.full else utk[n:n + cfg.n_ref])
    hq = np.stack([load_image(p).rgb for p in gt_paths])
    names = [p.stem for p in gt_paths]
    sets = {}
    for preset in PRESETS:
        lq_dir, gt_dir = work / preset / "lq", work / preset / "gt"
        manifest = {"seed": cfg.seed, "names": names}  # written last: the set is complete
        if _read_json(work / preset / "set.json") != manifest:
            for d in (lq_dir, gt_dir):  # another seed or n, or a killed build: start clean
                shutil.rmtree(d, ignore_errors=True)
            with torch.no_grad():
                lq, params = degrade_set(to_tensor(hq), preset, cfg.seed)
            for name, a, b in zip(names, to_uint8(lq), hq):
                save_image(lq_dir / f"{name}.png", a)
                save_image(gt_dir / f"{name}.png", b)
            write_bytes_atomic(work / preset / "params.json",
                               json.dumps(params, default=str).encode())
            write_bytes_atomic(work / preset / "set.json", json.dumps(manifest).encode())
        sets[preset] = {"lq": lq_dir, "gt": gt_dir, "names": names}
    lfw = in_split(list_images(cfg.lfw), "test")
    rng = np.random.default_rng(cfg.seed)
    lfw = [lfw[i] for i in sorted(rng.choice(len(lfw), min(n, len(lfw)), replace=False))]
    sets["lfw-real"] = {"lq": None, "gt": None, "paths": lfw,
                        "names": [f"{p.parent.name}__{p.stem}" for p in lfw]}
    sets["_ref"] = {"paths": ref_paths}
    return sets


def _images(d: dict) -> list[np.ndarray]:
    if d.get("paths") is not None:
        return [load_image(p).rgb for p in d["paths"]]
    return [load_image(Path(d["lq"]) / f"{n}.png").rgb for n in d["names"]]


def _identity(emb, a, b) -> float | None:
    from flipnet.errors import NoFaceError
    from flipnet.metrics.identity import cosine_similarity

    try:
        return float(cosine_similarity(emb.embed(a), emb.embed(b))[0])
    except NoFaceError:
        return None


def score(pred: list, lq: list, gt: list | None, ref: list, emb) -> dict:
    """All metrics of one method on one set (JSON-ready)."""
    from flipnet.metrics.brisque import brisque
    from flipnet.metrics.frechet import frechet_distance_images
    from flipnet.metrics.niqe import niqe
    from flipnet.metrics.psnr_ssim import psnr, ssim
    from flipnet.pipelines.evaluate import _mean, for_no_reference

    nr = [for_no_reference(p) for p in pred]
    out = {"niqe": _mean(niqe(nr)), "brisque": _mean(brisque(nr)),
           "fd_lowlevel": frechet_distance_images(pred, ref, "lowlevel", progress=False)}
    target = gt if gt is not None else lq  # real LQ: identity kept from input to output
    ids = [_identity(emb, p, t) for p, t in zip(pred, target)]
    found = [v for v in ids if v is not None]
    out["identity_cos"] = _mean(found)
    out["identity_deg"] = _mean(np.degrees(np.arccos(np.clip(found, -1, 1))))
    out["identity_per_image"] = ids
    if gt is not None:
        from flipnet.metrics.landmarks import landmark_distance

        out["psnr"] = _mean([psnr(p, g) for p, g in zip(pred, gt)])
        out["ssim"] = _mean([ssim(p, g) for p, g in zip(pred, gt)])
        out["lmd"] = landmark_distance(pred, gt, aligned=True, skip_no_face=True)["mean"]
    return out


def ground_truth_scores(gt: list, ref: list) -> dict:
    """NIQE, BRISQUE and FD-lowlevel of a set's ground truth itself (the reference row)."""
    from flipnet.metrics.brisque import brisque
    from flipnet.metrics.frechet import frechet_distance_images
    from flipnet.metrics.niqe import niqe
    from flipnet.pipelines.evaluate import _mean, for_no_reference

    nr = [for_no_reference(g) for g in gt]
    return {"niqe": _mean(niqe(nr)), "brisque": _mean(brisque(nr)),
            "fd_lowlevel": frechet_distance_images(gt, ref, "lowlevel", progress=False)}


_SPEED_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
def peak():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0
from flipnet.pipelines.methods import SAMPLING_METHODS, make_method
base, _, weights = sys.argv[1].partition("@")
steps = {"steps": int(sys.argv[2])} if base in SAMPLING_METHODS else {}
m = make_method(base, weights or None, device="cpu", batch_size=32, **steps)
out = {"threads": torch.get_num_threads()}
for bs in (1, 32):
    x = np.random.default_rng(0).integers(0, 255, (bs, m.size, m.size, 3), dtype=np.uint8)
    m.restore(x[:1])
    base = peak()
    reps = 3 if bs == 1 else 1
    t0 = time.perf_counter()
    for _ in range(reps):
        m.restore(x)
    dt = (time.perf_counter() - t0) / reps
    out[f"faces_per_s_b{bs}"] = bs / dt
    out[f"peak_mb_b{bs}"] = max(0, peak() - base) / 2**20
out["rss_mb"] = peak() / 2**20
print(json.dumps(out))
"""


def speed(name: str, *, steps: int = 25, threads: int | None = None) -> dict:
    """Faces/s at batch 1 and 32 and the peak-RSS growth of each call, measured in a fresh
    process (so one method's memory does not hide another's); CUDA is not used here."""
    import subprocess
    import sys

    threads = threads or os.cpu_count() or 1
    r = subprocess.run([sys.executable, "-c", _SPEED_SCRIPT, name, str(steps), str(threads)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def per_group(ids: list, names: list[str]) -> dict:
    """Mean identity similarity per UTKFace age band, gender and race."""
    groups: dict[str, list] = {}
    for v, n in zip(ids, names):
        lab = utkface_labels(n)
        if v is None or lab is None:
            continue
        band = age_band(lab["age"])
        for key in (f"age {band}", f"gender {lab['gender']}", f"race {lab['race']}"):
            groups.setdefault(key, []).append(v)
    return {k: {"mean_cos": float(np.mean(v)), "n": len(v)} for k, v in sorted(groups.items())}


def method_fingerprint(name: str) -> str:
    """SHA-256 over a method's default weights folder (config + tensors); "none" without one.
    Cached bench results are reused only while this and the bench settings are unchanged."""
    import hashlib

    from flipnet.errors import FlipnetError
    from flipnet.weights import DEFAULT_WEIGHTS, resolve_weights

    base, _, weights = name.partition("@")
    if base not in DEFAULT_WEIGHTS:
        return "none"
    try:
        folder = resolve_weights(weights or DEFAULT_WEIGHTS[base])
    except FlipnetError:
        return "none"
    digest = hashlib.sha256()
    for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()


def _read_json(path: Path):
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cached(path: Path, key: dict) -> dict | None:
    """A finished (method, set) result written by an earlier, possibly killed, run."""
    done = _read_json(path)
    return done["result"] if isinstance(done, dict) and done.get("key") == key else None


def run_bench(cfg: BenchConfig, *, progress: bool = True) -> dict:
    """Build sets, run methods, score, plot, and rewrite the generated block of BENCHMARKS.md."""
    from rich.progress import Progress

    from flipnet.faces.identity import IdentityEmbedder
    from flipnet.pipelines.methods import available_methods, make_method_from_spec

    t_start = time.perf_counter()
    for folder in [Path(cfg.work), *Path(cfg.work).rglob("*")]:  # what a kill -9 left half-written
        remove_partial_files(folder)
    sets = build_sets(cfg)
    ref = [load_image(p).rgb for p in sets.pop("_ref")["paths"]]
    names = [m for m in (cfg.methods.split(",") if cfg.methods else available_methods()) if m]
    emb = IdentityEmbedder(aligned=True)
    results: dict = {"config": asdict(cfg), "methods": {}, "sets": list(sets),
                     "ground_truth": {}}
    grid_rows = []
    # each set is read once, not once per method
    loaded = {sname: (_images(s), [load_image(Path(s["gt"]) / f"{n}.png").rgb
                                   for n in s["names"]] if s["gt"] else None)
              for sname, s in sets.items()}
    for sname, (_, gt) in loaded.items():  # the no-reference scores a restorer should reach
        if gt is not None:
            results["ground_truth"][sname] = ground_truth_scores(gt, ref)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("bench", total=len(names) * len(sets))
        for mname in names:
            method = None  # built only when some set of it is not cached
            res = results["methods"][mname] = {"sets": {}}
            key = {"bench": {k: v for k, v in asdict(cfg).items() if k != "docs"},
                   "weights": method_fingerprint(mname)}
            done_dir = Path(cfg.work) / "done" / mname  # a kill -9 loses at most one (method, set)
            for sname, s in sets.items():
                lq, gt = loaded[sname]
                pdir = Path(cfg.work) / "pred" / mname / sname
                r = _cached(done_dir / f"{sname}.json", key)
                if r is None:
                    method = method or make_method_from_spec(mname, steps=cfg.prior_steps,
                                                             seed=cfg.seed)
                    t0 = time.perf_counter()
                    pred = list(method.restore(np.stack(lq)))
                    sec = time.perf_counter() - t0
                    for n, p in zip(s["names"], pred):
                        save_image(pdir / f"{n}.png", p)
                    r = score(pred, lq, gt, ref, emb)
                    r["seconds_per_face"] = sec / len(pred)
                    if sname == "codeformer":
                        r["identity_by_group"] = per_group(r["identity_per_image"], s["names"])
                    write_bytes_atomic(done_dir / f"{sname}.json",
                                       json.dumps({"key": key, "result": r}).encode())
                if sname == "codeformer":
                    pred6 = [load_image(pdir / f"{n}.png").rgb for n in s["names"][:6]]
                    grid_rows.append((mname, pred6, lq[:6], gt[:6]))
                res["sets"][sname] = r
                bar.advance(task)
            if cfg.speed:
                r = _cached(done_dir / "speed.json", key)
                if r is None:
                    r = speed(mname, steps=cfg.prior_steps)
                    if "error" not in r:
                        write_bytes_atomic(done_dir / "speed.json",
                                           json.dumps({"key": key, "result": r}).encode())
                res["speed"] = r
    results["seconds"] = time.perf_counter() - t_start
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    docs = Path(cfg.docs)
    from flipnet.pipelines.bench_report import plot_all, render_markdown

    plot_all(results, grid_rows, docs / "bench")
    for m in results["methods"].values():
        for r in m["sets"].values():
            r.pop("identity_per_image", None)
    write_bytes_atomic(docs / "bench" / "results.json", json.dumps(results, indent=1).encode())
    _splice(docs / "BENCHMARKS.md", render_markdown(results))
    return results


def _splice(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{START}\n{block}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    write_bytes_atomic(path, text.encode())
